//! POSTing to a server the operator configured (a webhook, an OpenTelemetry collector): one
//! HTTP/1.1 request per connection, `http://` or `https://` trusting only the certificates
//! given for it (the hub's own trust bundle is for agents, not for these servers).
//!
//! An address may carry a secret (many services put one in the path or the user part): only
//! its scheme, host and port are ever logged or shown ([`redacted`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The most of an answer's body that is read; the rest is not waited for.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A parsed address to POST to.
pub(crate) struct Endpoint {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A 2xx answer's body (at most [`MAX_ANSWER_BYTES`]).
pub(crate) type Answer = Bytes;

// === impl Endpoint ===

impl Endpoint {
    /// Parses `url` (`what` names it in errors, e.g. "the webhook"): `http://` or `https://`,
    /// the latter with `roots_pem`, the certificates its server's must chain to.
    pub(crate) fn parse(url: &str, roots_pem: Option<&[u8]>, what: &str) -> Result<Self, String> {
        let shown = redacted(url);
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{what} `{shown}` is not a URL: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{what} `{shown}` names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{what} `{shown}` has a user or password in it, which the hub would not send: remove it (a secret goes in a header or the path)"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let pem = roots_pem.ok_or_else(|| {
                    format!(
                        "{what} `{shown}` is https: give the certificates its server's chain to"
                    )
                })?;
                Some(connector(pem, &host, what)?)
            }
            _ => return Err(format!("{what} `{shown}` must be http:// or https://")),
        };
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        Ok(Self {
            uri,
            host,
            port,
            tls,
        })
    }

    /// Whether what is posted crosses a network in clear: plain `http` to a host other than
    /// this one (`localhost` or a loopback address).
    pub(crate) fn in_clear_off_host(&self) -> bool {
        let loopback = self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.tls.is_none() && !loopback
    }

    /// The address as it may be shown.
    pub(crate) fn shown(&self) -> String {
        redacted(&self.uri.to_string())
    }

    /// POSTs `body` of `content_type` with `headers`; the answer's body if it is 2xx.
    pub(crate) async fn post(
        &self,
        body: Bytes,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<Answer, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        match &self.tls {
            None => self.post_over(tcp, body, content_type, headers).await,
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                self.post_over(tls, body, content_type, headers).await
            }
        }
    }

    async fn post_over<I>(
        &self,
        io: I,
        body: Bytes,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<Answer, String>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.as_str().to_owned());
        let mut request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::USER_AGENT, "entente-hub");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        // The error would show a header's value: say which header only.
        let request = request.body(Full::new(body)).map_err(|_| {
            "request: a configured header's name or value is not valid in HTTP".to_owned()
        })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok(body.to_bytes())
    }
}

/// A TLS client that trusts the certificates of `pem` alone.
fn connector(pem: &[u8], host: &str, what: &str) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{what}'s certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{what}'s certificates: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what}'s certificates: no certificate in the PEM"));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{what}'s host: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `url` with nothing after its authority: what may be shown of it.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // A user and password before `@` are secret too.
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}/…")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_address_is_shown_without_its_path_or_credentials() {
        assert_eq!(
            redacted("https://hooks.example.org/services/T0/B1/SECRET?x=1"),
            "https://hooks.example.org/…"
        );
        assert_eq!(
            redacted("http://user:pass@127.0.0.1:8080/h"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redacted("nonsense"), "(not a URL)");
    }

    #[test]
    fn addresses_are_checked_when_the_hub_starts() {
        let target = Endpoint::parse("http://127.0.0.1:9/hook?k=v", None, "the webhook").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 9));
        assert!(target.tls.is_none());
        assert_eq!(target.shown(), "http://127.0.0.1:9/…");
        assert_eq!(
            Endpoint::parse("http://[::1]/x", None, "x").unwrap().host,
            "::1"
        );
        for (url, says) in [
            ("ftp://h/x", "http:// or https://"),
            ("https://h.example/SECRET", "certificates"),
            ("not a url", "not a URL"),
            ("/relative", "no host"),
            ("http://user:SECRET@h.example/x", "a user or password"),
        ] {
            let err = Endpoint::parse(url, None, "the webhook").err().unwrap();
            assert!(err.starts_with("the webhook"), "{url}: {err}");
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        let err = Endpoint::parse("https://h.example/x", Some(b"not pem"), "the collector")
            .err()
            .unwrap();
        assert!(
            err.contains("the collector's certificates: no certificate"),
            "{err}"
        );
    }
}
