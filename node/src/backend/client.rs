//! HTTP/1.1 POSTs to the backend over keep-alive connections (hyper's client side), with
//! a small pool of idle ones. One request per connection at a time; a connection whose
//! request failed or timed out is dropped, never reused.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::sync::lock;

/// Idle connections kept for reuse; more are closed when their request is done.
const MAX_IDLE: usize = 16;

/// Largest answer body read from the backend; a larger one is garbage.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Where the backend is: `http://host:port/path` split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, what is dialed and sent as `Host`.
    pub authority: String,
    /// The path (and query) the calls are POSTed to.
    pub path: String,
}

impl Endpoint {
    /// Parses `--backend-url`: `http://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("--backend-url '{url}' is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--backend-url '{url}': https is not supported; give the bridge's plain \
                     http address on a private network or loopback (as Gunicorn listens)"
                ));
            }
            _ => return Err(format!("--backend-url '{url}' must start with http://")),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("--backend-url '{url}' names no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(Endpoint {
            authority: format!("{host}:{port}"),
            path,
        })
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the backend at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the backend connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the backend's answer is over {MAX_ANSWER_BYTES} bytes or broken: {0}")]
    Body(String),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// See the module header.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// POSTs `body` (JSON) with `signature` in `header`; the status and the body of the
    /// answer. Not cancel-safe in the sense that a dropped call drops its connection.
    pub async fn post(
        &self,
        body: Bytes,
        header: &'static str,
        signature: String,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut sender = match self.take_idle().await {
            Some(sender) => sender,
            None => self.dial().await?,
        };
        let request = hyper::Request::post(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .header(
                USER_AGENT,
                concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            )
            .header(header, signature)
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let keep_alive = !response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?
            .to_bytes();
        if keep_alive {
            self.put_idle(sender);
        }
        Ok((status, body))
    }

    async fn dial(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let authority = &self.endpoint.authority;
        let stream = TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| ClientError::Connect(authority.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// An idle connection that is still open and ready for a request, if any.
    async fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let mut sender = lock(&self.idle).pop()?;
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_url_splits_into_what_is_dialed_and_posted_to() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8000/switchboard/"),
            Ok(Endpoint {
                authority: "127.0.0.1:8000".into(),
                path: "/switchboard/".into()
            })
        );
        assert_eq!(
            Endpoint::parse("http://backend").map(|e| (e.authority, e.path)),
            Ok(("backend:80".into(), "/".into()))
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:9000/b?x=1").map(|e| (e.authority, e.path)),
            Ok(("[::1]:9000".into(), "/b?x=1".into()))
        );
        assert!(
            Endpoint::parse("https://x/")
                .expect_err("https is refused")
                .contains("not supported")
        );
        assert!(Endpoint::parse("ftp://x/").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
