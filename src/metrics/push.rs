//! `--pushgateway URL`: the metrics of any command, pushed to a Prometheus
//! Pushgateway (`PUT <path>/metrics/job/valero-db/env/<env>`, which
//! replaces the group: what a finished Job pushed never lingers as a stale
//! series). http:// or https:// (rustls, the system's roots; `SSL_CERT_FILE`
//! names another CA bundle). Credentials come from the environment, never
//! from the command line: `VALERO_DB_PUSHGATEWAY_TOKEN` (a bearer token) or
//! `VALERO_DB_PUSHGATEWAY_USER` and `VALERO_DB_PUSHGATEWAY_PASSWORD` (basic
//! auth).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::context::Context;
use crate::error::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How the Pushgateway is told who pushes.
enum Credentials {
    None,
    Bearer(String),
    Basic { user: String, password: String },
}

impl Credentials {
    fn from_env() -> Result<Credentials> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let token = var("VALERO_DB_PUSHGATEWAY_TOKEN");
        let user = var("VALERO_DB_PUSHGATEWAY_USER");
        let password = var("VALERO_DB_PUSHGATEWAY_PASSWORD");
        for secret in [&token, &password].into_iter().flatten() {
            crate::redact::register_secret(secret);
        }
        match (token, user, password) {
            (None, None, None) => Ok(Credentials::None),
            (Some(token), None, None) => Ok(Credentials::Bearer(token)),
            (None, Some(user), Some(password)) => Ok(Credentials::Basic { user, password }),
            _ => Err(Error::usage(
                "Pushgateway credentials: set VALERO_DB_PUSHGATEWAY_TOKEN, or both VALERO_DB_PUSHGATEWAY_USER and VALERO_DB_PUSHGATEWAY_PASSWORD",
            )),
        }
    }

    fn header(&self) -> Option<String> {
        use base64::Engine as _;
        match self {
            Credentials::None => None,
            Credentials::Bearer(token) => Some(format!("Bearer {token}")),
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
        }
    }
}

/// Where to push: parsed from `--pushgateway`.
struct Gateway {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Gateway {
    fn parse(gateway: &str, env: &str) -> Result<Gateway> {
        let url = url::Url::parse(gateway)
            .map_err(|e| Error::usage(format!("--pushgateway {gateway}: {e}")))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(Error::usage(format!(
                    "--pushgateway takes http:// or https:// URLs, not {other}://"
                )))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::usage(
                "--pushgateway: no credentials in the URL (it shows up in process lists); set VALERO_DB_PUSHGATEWAY_TOKEN or _USER/_PASSWORD",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::usage("--pushgateway needs a host"))?
            .to_string();
        Ok(Gateway {
            tls,
            port: url.port_or_known_default().unwrap_or(9091),
            path: format!(
                "{}/metrics/job/valero-db/env/{env}",
                url.path().trim_end_matches('/')
            ),
            host,
        })
    }

    fn what(&self) -> String {
        format!("Pushgateway {}:{}", self.host, self.port)
    }
}

/// Pushes the metrics of this run.
pub async fn push(ctx: &Context, gateway: &str) -> Result<()> {
    let gateway = Gateway::parse(gateway, &ctx.env.name)?;
    let credentials = Credentials::from_env()?;
    let body = super::redacted(ctx).await?;
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri(&gateway.path)
        .header(HOST, format!("{}:{}", gateway.host, gateway.port))
        .header(CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::usage(format!("--pushgateway: {e}")))?;
    if let Some(value) = credentials.header() {
        let value = HeaderValue::from_str(&value).map_err(|_| {
            Error::usage("Pushgateway credentials contain characters a header cannot carry")
        })?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let status = tokio::time::timeout(TIMEOUT, send(&gateway, request))
        .await
        .map_err(|_| Error::unreachable(gateway.what(), "timed out"))??;
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Error::usage(format!(
            "{} refused the push ({status}): check VALERO_DB_PUSHGATEWAY_TOKEN or _USER/_PASSWORD",
            gateway.what()
        ))),
        _ => Err(Error::internal(format!(
            "{} answered {status}",
            gateway.what()
        ))),
    }
}

/// One request over a fresh connection, TLS if the URL says https.
async fn send(gateway: &Gateway, request: Request<Full<Bytes>>) -> Result<StatusCode> {
    let what = gateway.what();
    let tcp = tokio::net::TcpStream::connect((gateway.host.as_str(), gateway.port))
        .await
        .map_err(|e| Error::unreachable(&what, e))?;
    if !gateway.tls {
        return exchange(TokioIo::new(tcp), request, &what).await;
    }
    let name = rustls_pki_name(&gateway.host)?;
    let tls = tokio_rustls::TlsConnector::from(client_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| Error::unreachable(&what, e))?;
    exchange(TokioIo::new(tls), request, &what).await
}

async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>, what: &str) -> Result<StatusCode>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Error::unreachable(what, e))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Error::unreachable(what, e))?;
    Ok(response.status())
}

fn rustls_pki_name(host: &str) -> Result<tokio_rustls::rustls::pki_types::ServerName<'static>> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Error::usage(format!("--pushgateway host {host}: {e}")))
}

/// The system's trusted roots (or `SSL_CERT_FILE`'s).
fn client_config() -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(Error::usage(
            "--pushgateway https://: no trusted CA certificates found (install ca-certificates or set SSL_CERT_FILE)",
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
