//! Who keeps valero-db waiting for a lock: the sessions that hold locks on
//! a schema (before a restore), or that block one of valero-db's own
//! sessions right now (`Watch`, while a migration's statement runs),
//! described for the operator — pid, role, application, client, state and
//! for how long, the shape of the current query: its literals replaced by
//! `$n` as `pg_stat_statements` shows queries (application queries carry
//! customer data, and these descriptions go into errors, JSON, deployment
//! records and pipeline artifacts), shortened, secrets masked.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::sql::classify;
use crate::error::Result;

/// A session that holds a lock valero-db needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    /// Another valero-db session (never terminated by valero-db).
    pub valero_db: bool,
    /// `pid 4711 (role app, application fibu-api, 10.0.0.7, idle in
    /// transaction for 3m 12s: SELECT …)`, secrets masked.
    pub description: String,
}

/// The descriptions of `blockers`, joined for a log line or an error;
/// none left means they ended between the wait and the look.
pub fn describe_all(blockers: &[Blocker]) -> String {
    if blockers.is_empty() {
        return "sessions that have ended since".into();
    }
    blockers
        .iter()
        .map(|b| b.description.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

const DESCRIBE: &str =
    "SELECT a.pid, coalesce(a.usename::text, '?'), coalesce(a.application_name, ''), \
        coalesce(host(a.client_addr), 'local'), coalesce(a.state, '?'), \
        coalesce(extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::bigint, 0), \
        regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g') \
 FROM pg_stat_activity a WHERE a.pid = ANY($1) ORDER BY a.pid";

/// Describes the sessions with these pids (those that have ended since
/// are left out).
async fn describe(conn: &mut PgConnection, pids: &[i32]) -> sqlx::Result<Vec<Blocker>> {
    if pids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(DESCRIBE)
        .bind(pids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(blocker_of).collect())
}

fn blocker_of(r: &sqlx::postgres::PgRow) -> Blocker {
    let pid: i32 = r.get(0);
    let (role, app, client, state): (String, String, String, String) =
        (r.get(1), r.get(2), r.get(3), r.get(4));
    let (secs, query): (i64, String) = (r.get(5), r.get(6));
    let query = shortened(&without_literals(&query), QUERY_CHARS);
    let age = crate::units::format_duration(Duration::from_secs(secs.max(0) as u64));
    let shown_app = if app.is_empty() {
        String::new()
    } else {
        format!(", application {app}")
    };
    Blocker {
        pid,
        valero_db: app.starts_with("valero-db"),
        description: crate::redact::redact(&format!(
            "pid {pid} (role {role}{shown_app}, {client}, {state} for {age}: {query})"
        )),
    }
}

/// How much of a blocking session's query shape a description shows.
const QUERY_CHARS: usize = 120;

/// The shape of a query: every string literal (`'…'`, `E'…'`, `$$…$$`,
/// unterminated ones to the end) and every number replaced by `$n`,
/// numbered after the query's own parameters; identifiers, keywords and
/// operators kept.
pub fn without_literals(query: &str) -> String {
    let own = own_parameters(query);
    let mut n = own;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    let chars: Vec<char> = query.chars().collect();
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let word_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '\'' || ((c == 'E' || c == 'e') && chars.get(i + 1) == Some(&'\'') && !word_before)
        {
            let escapes = c != '\'';
            let mut j = if escapes { i + 2 } else { i + 1 };
            while j < chars.len() {
                match chars[j] {
                    '\\' if escapes => j += 2,
                    '\'' if chars.get(j + 1) == Some(&'\'') => j += 2,
                    '\'' => break,
                    _ => j += 1,
                }
            }
            out.push_str(&next());
            i = j + 1;
        } else if c == '$' && !word_before && chars.get(i + 1).is_some_and(|d| !d.is_ascii_digit())
        {
            let tag_end = chars[i + 1..]
                .iter()
                .position(|d| *d == '$')
                .map(|p| i + 1 + p);
            let tag: Option<String> =
                tag_end
                    .map(|e| chars[i..=e].iter().collect())
                    .filter(|t: &String| {
                        t[1..t.len() - 1]
                            .chars()
                            .all(|d| d.is_alphanumeric() || d == '_')
                    });
            match tag {
                Some(tag) => {
                    let body: String = chars[i + tag.chars().count()..].iter().collect();
                    let len = body.find(&tag).map_or(body.chars().count(), |b| {
                        body[..b].chars().count() + tag.chars().count()
                    });
                    out.push_str(&next());
                    i += tag.chars().count() + len;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() && !word_before && !(i > 0 && chars[i - 1] == '$') {
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || chars[j] == '.'
                    || ((chars[j] == 'e' || chars[j] == 'E') && j > i)
                    || ((chars[j] == '-' || chars[j] == '+') && matches!(chars[j - 1], 'e' | 'E')))
            {
                j += 1;
            }
            out.push_str(&next());
            i = j;
        } else if c.is_alphanumeric() || c == '_' || c == '"' {
            // An identifier (quoted ones whole): digits inside stay.
            let quoted = c == '"';
            let mut j = i + 1;
            while j < chars.len() {
                if quoted {
                    if chars[j] == '"' {
                        j += 1;
                        break;
                    }
                } else if !(chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '$') {
                    break;
                }
                j += 1;
            }
            out.extend(&chars[i..j.min(chars.len())]);
            i = j;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The highest `$n` a query already uses.
fn own_parameters(query: &str) -> usize {
    query
        .split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// At most `max` characters, `…` marking a cut.
fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The other sessions that hold or wait for locks on relations of `schema`.
pub async fn holding_locks_in(
    conn: &mut PgConnection,
    what: &str,
    schema: &str,
) -> Result<Vec<Blocker>> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify(what, e))?;
    describe(conn, &pids).await.map_err(|e| classify(what, e))
}

/// What session `pid` waits for now: the relations it waits to lock (empty
/// when it waits for transactions to end, as `CREATE INDEX CONCURRENTLY`
/// does) and the sessions that block it.
async fn blocking(conn: &mut PgConnection, pid: i32) -> sqlx::Result<(String, Vec<Blocker>)> {
    let row = sqlx::query(
        "SELECT pg_blocking_pids($1), \
                (SELECT string_agg(DISTINCT format('%I.%I', n.nspname, c.relname), ', ') \
                 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE l.pid = $1 AND NOT l.granted)",
    )
    .bind(pid)
    .fetch_one(&mut *conn)
    .await?;
    let pids: Vec<i32> = row.get(0);
    let relations: Option<String> = row.get(1);
    Ok((relations.unwrap_or_default(), describe(conn, &pids).await?))
}

/// Watches one of valero-db's sessions while it runs a statement, from a
/// second connection made only once the statement has run for a moment:
/// whenever the session waits for a lock, the operator sees on whom
/// (`progress::Waiting`), and `stop` returns the blockers seen last.
pub struct Watch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Blocker>>,
}

/// How soon a running statement is first looked at, and how often after.
const FIRST_LOOK: Duration = Duration::from_millis(250);
const LOOK_EVERY: Duration = Duration::from_millis(500);

impl Watch {
    /// Starts watching session `pid`; `label` names the work in messages,
    /// e.g. `fibu: 0002_index.up.sql`.
    pub fn start(options: PgConnectOptions, pid: i32, label: String) -> Watch {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut conn: Option<PgConnection> = None;
            let mut waiting: Option<crate::progress::Waiting> = None;
            let mut pause = FIRST_LOOK;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = LOOK_EVERY;
                if conn.is_none() {
                    conn = connect(&options).await;
                }
                let Some(c) = conn.as_mut() else { break };
                let Ok((relations, blockers)) = blocking(c, pid).await else {
                    break;
                };
                if blockers.is_empty() {
                    continue;
                }
                let on = if relations.is_empty() {
                    "for transactions to end".to_string()
                } else {
                    format!("for a lock on {relations}")
                };
                waiting
                    .get_or_insert_with(crate::progress::Waiting::new)
                    .say(&format!(
                        "{label}: waiting {on}, held by {}",
                        describe_all(&blockers)
                    ));
                seen = blockers;
            }
            if let Some(c) = conn {
                let _ = c.close().await;
            }
            seen
        });
        Watch { stop, task }
    }

    /// Ends the watch; the blockers it saw last (none if it never saw the
    /// session wait).
    pub async fn stop(self) -> Vec<Blocker> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The watching connection; none (and no watch) if it cannot be made in
/// a few seconds — watching is a courtesy, never a reason to fail.
async fn connect(options: &PgConnectOptions) -> Option<PgConnection> {
    let options = options.clone().application_name("valero-db lock watch");
    match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
        Ok(Ok(conn)) => Some(conn),
        _ => {
            tracing::debug!("could not open a connection to watch lock waits");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_query_keeps_its_shape_and_loses_its_literals() {
        let q = "UPDATE kunden SET email = 'anna@kunde.de', iban = E'DE89\\'37' \
                 WHERE id = 4711 AND t2.x > -3.5e10 AND note = $$geheim$$ AND k = $tag$a$b$tag$ AND p = $1";
        assert_eq!(
            without_literals(q),
            "UPDATE kunden SET email = $2, iban = $3 WHERE id = $4 AND t2.x > -$5 AND note = $6 AND k = $7 AND p = $1"
        );
        assert_eq!(
            without_literals("SELECT * FROM \"T1\" WHERE a = 'unterminated"),
            "SELECT * FROM \"T1\" WHERE a = $1"
        );
        assert_eq!(
            without_literals("INSERT INTO t3 VALUES (1, 'x''y')"),
            "INSERT INTO t3 VALUES ($1, $2)"
        );
        assert_eq!(shortened("abcdef", 4), "abc…");
    }
}
