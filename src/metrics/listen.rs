//! `capture --metrics-listen ADDR`: the long-running capture serves its
//! metrics for Prometheus to scrape (`GET /metrics`, the same exposition
//! `--metrics-file` writes), refreshed after every pass. Batch commands
//! push to a Pushgateway instead; a Deployment that runs for weeks is
//! scraped like any other target.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};

/// Prometheus' text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition served, replaced after every pass.
#[derive(Clone, Default)]
pub struct Exposition(Arc<RwLock<String>>);

impl Exposition {
    pub fn set(&self, text: String) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = text;
    }

    fn text(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Binds `addr` — an address that cannot be bound is a usage error
/// (exit 2) before any capture starts — and serves in the background for
/// as long as the process runs.
pub async fn serve(addr: SocketAddr, exposition: Exposition) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::usage(format!("--metrics-listen {addr}: cannot listen there: {e}")))?;
    tracing::info!("serving metrics on http://{addr}/metrics");
    tokio::spawn(accept_loop(listener, exposition));
    Ok(())
}

async fn accept_loop(listener: tokio::net::TcpListener, exposition: Exposition) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, never spin.
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let exposition = exposition.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = respond(&request, &exposition);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, exposition: &Exposition) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, exposition.text()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "valero-db serves /metrics\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
