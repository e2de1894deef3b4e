//! valero-db's own PostgreSQL sessions, so that an interrupt ends them on
//! the server at once: a backend busy with a long statement (an index
//! build, `pg_sleep`, a lock wait) notices a dead client only when that
//! statement ends, and until then keeps its transaction and its locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// One open session: how to reach its server, and its backend pid.
struct Session {
    id: u64,
    options: PgConnectOptions,
    pid: i32,
}

static OPEN: Mutex<Vec<Session>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Remembers a session until the returned guard is dropped.
pub fn register(options: &PgConnectOptions, pid: i32) -> Registered {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut open) = OPEN.lock() {
        open.push(Session {
            id,
            options: options.clone(),
            pid,
        });
    }
    Registered(id)
}

/// Forgets its session when dropped (the connection closed normally).
#[derive(Debug)]
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = OPEN.lock() {
            open.retain(|s| s.id != self.0);
        }
    }
}

/// Terminates every session still open (on SIGINT/SIGTERM): each backend
/// rolls its transaction back and lets go of its locks now. Best effort,
/// a few seconds at most per server.
pub async fn terminate_all() {
    let sessions: Vec<Session> = match OPEN.lock() {
        Ok(mut open) => std::mem::take(&mut *open),
        Err(_) => return,
    };
    for s in sessions {
        let attempt = async {
            let mut conn = s.options.connect().await.ok()?;
            let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(s.pid)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
            Some(())
        };
        let limit = std::time::Duration::from_secs(5);
        if tokio::time::timeout(limit, attempt).await.is_err() {
            tracing::warn!("could not end PostgreSQL session {} in time", s.pid);
        }
    }
}
