//! TLS end to end with certificates made in the test (rcgen): h1 and h2
//! over TLS inbound, TLS and mTLS to the upstream, a bad upstream
//! certificate counted as a failure, and a certificate rotation picked up
//! without dropping an open connection.

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;
use support::{client, get, get_json, upstream};
use tokio::net::TcpListener;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone(), key_der: key.serialize_der() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fusebox-tls-{tag}-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_client(ca: &Ca, h2: bool) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let config = rustls::ClientConfig::builder().with_root_certificates(ca.roots()).with_no_client_auth();
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
    let conn = if h2 { b.enable_http2().build() } else { b.enable_http1().build() };
    let mut builder = Client::builder(TokioExecutor::new());
    if h2 {
        builder.http2_only(true);
    }
    builder.build(conn)
}

/// A TLS upstream answering `200 tls-upstream`; with `client_ca`, it
/// requires a client certificate signed by that CA.
async fn tls_upstream(leaf: &Leaf, client_ca: Option<&Ca>) -> std::net::SocketAddr {
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(rustls::server::WebPkiClientVerifier::builder(Arc::new(ca.roots())).build().unwrap()),
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(vec![leaf.der.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()))).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls-upstream"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

async fn fusebox_tls(dir: &TempDir, leaf: &Leaf, upstream_url: &str) -> fusebox::App {
    let cert = dir.write("tls.crt", &leaf.cert_pem);
    let key = dir.write("tls.key", &leaf.key_pem);
    support::fusebox(&format!(
        "tls: {{ certFile: {cert}, keyFile: {key} }}\nupstreams:\n  api:\n    endpoints: [{upstream_url}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    ))
    .await
}

fn https_url(app: &fusebox::App, path: &str) -> String {
    format!("https://localhost:{}{path}", app.data_addr().port())
}

#[tokio::test]
async fn http1_and_http2_over_tls_inbound() {
    let ca = Ca::new("test ca");
    let dir = TempDir::new("inbound");
    let up = upstream("plain").await;
    let app = fusebox_tls(&dir, &ca.leaf(&["localhost"]), &up.url()).await;

    let resp = tls_client(&ca, false).get(https_url(&app, "/one").parse().unwrap()).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "plain /one");
    assert_eq!(up.header("x-forwarded-proto").as_deref(), Some("https"));

    let resp = tls_client(&ca, true).get(https_url(&app, "/two").parse().unwrap()).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2, "ALPN h2");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "plain /two");
}

#[tokio::test]
async fn tls_and_mtls_to_the_upstream() {
    let ca = Ca::new("upstream ca");
    let dir = TempDir::new("upstream");
    let ca_file = dir.write("ca.pem", &ca.pem());

    // Server-authenticated TLS, verified against the configured CA.
    let plain_tls = tls_upstream(&ca.leaf(&["localhost"]), None).await;
    // mTLS: the upstream wants a client certificate from the same CA.
    let mtls = tls_upstream(&ca.leaf(&["localhost"]), Some(&ca)).await;
    let client_leaf = ca.leaf(&["fusebox-client"]);
    let client_cert = dir.write("client.crt", &client_leaf.cert_pem);
    let client_key = dir.write("client.key", &client_leaf.key_pem);
    let app = support::fusebox(&format!(
        "upstreams:\n  tls:\n    endpoints: [https://localhost:{}]\n    tls: {{ caFile: {ca_file} }}\n  mtls:\n    endpoints: [https://localhost:{}]\n    tls: {{ caFile: {ca_file}, certFile: {client_cert}, keyFile: {client_key} }}\n  nocert:\n    endpoints: [https://localhost:{}]\n    tls: {{ caFile: {ca_file} }}\nroutes:\n  - {{ match: {{ pathPrefix: /tls }}, upstream: tls }}\n  - {{ match: {{ pathPrefix: /mtls }}, upstream: mtls }}\n  - {{ match: {{ pathPrefix: /nocert }}, upstream: nocert }}\n",
        plain_tls.port(),
        mtls.port(),
        mtls.port()
    ))
    .await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    let (status, _, body) = get(&c, &format!("{base}/tls")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "tls-upstream"));
    let (status, _, body) = get(&c, &format!("{base}/mtls")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "tls-upstream"));
    // Without a client certificate the mTLS upstream refuses the handshake.
    let (status, _, _) = get(&c, &format!("{base}/nocert")).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn a_bad_upstream_certificate_is_an_upstream_failure() {
    let trusted = Ca::new("trusted");
    let rogue = Ca::new("rogue");
    let dir = TempDir::new("badcert");
    let ca_file = dir.write("ca.pem", &trusted.pem());
    let addr = tls_upstream(&rogue.leaf(&["localhost"]), None).await;
    let app = support::fusebox(&format!(
        "upstreams:\n  api:\n    endpoints: [https://localhost:{}]\n    tls: {{ caFile: {ca_file} }}\n    breaker: {{ failureThreshold: 2 }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        addr.port()
    ))
    .await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    assert_eq!(get(&c, &url).await.0, 502);
    assert_eq!(get(&c, &url).await.0, 502);
    let (status, headers, _) = get(&c, &url).await;
    assert_eq!(status, 503, "two certificate failures opened the circuit");
    assert_eq!(headers["x-fusebox-circuit"], "open");
    let cb = get_json(&c, &format!("http://{}/health/circuit-breakers", app.admin_addr())).await;
    assert_eq!(cb["circuitBreakers"][0]["trip"]["rule"], "consecutive");
}

fn peer_cert_serial(cert: &CertificateDer<'_>) -> Vec<u8> {
    // The DER differs between two certificates: enough to tell them apart.
    cert.as_ref().to_vec()
}

async fn handshake_cert(ca: &Ca, addr: std::net::SocketAddr) -> (Vec<u8>, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let config = rustls::ClientConfig::builder().with_root_certificates(ca.roots()).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (peer_cert_serial(&cert), tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_dropping_open_connections() {
    let ca = Ca::new("rotation ca");
    let dir = TempDir::new("rotate");
    let up = upstream("plain").await;
    let first = ca.leaf(&["localhost"]);
    let app = fusebox_tls(&dir, &first, &up.url()).await;
    let (before, open_conn) = handshake_cert(&ca, app.data_addr()).await;
    assert_eq!(before, first.der.as_ref());

    // An HTTP/1.1 connection opened before the rotation...
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(open_conn)).await.unwrap();
    tokio::spawn(conn);
    let req = || Request::get("/before").header("host", "localhost").body(Empty::new()).unwrap();
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);

    // ...cert-manager writes new files...
    let second = ca.leaf(&["localhost"]);
    let tmp = dir.write("tls.crt.new", &second.cert_pem);
    dir.write("tls.key", &second.key_pem);
    std::fs::rename(tmp, dir.0.join("tls.crt")).unwrap();
    let start = tokio::time::Instant::now();
    loop {
        let (now, _) = handshake_cert(&ca, app.data_addr()).await;
        if now == second.der.as_ref() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "new certificate not served after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the old connection still works.
    let resp = sender.send_request(req()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "plain /before");
}

#[test]
fn fusebox_check_reports_unreadable_tls_files() {
    let text = "tls: { certFile: /nonexistent/tls.crt, keyFile: /nonexistent/tls.key }\nupstreams:\n  a:\n    endpoints: [https://x.internal:443]\n    tls: { caFile: /nonexistent/ca.pem, serverName: 'not a name!' }\nroutes: []\n";
    let err = fusebox::config::parse(text).unwrap_err();
    let all = err.to_string();
    for needle in ["tls.certFile", "tls.keyFile", "upstreams.a.tls.caFile", "upstreams.a.tls.serverName"] {
        assert!(all.contains(needle), "missing {needle} in {all}");
    }
    assert!(Path::new("/nonexistent").metadata().is_err());
}

#[tokio::test]
async fn the_admin_listener_serves_https_and_wss_with_admin_tls() {
    use futures_util::StreamExt;
    let ca = Ca::new("fusebox admin test CA");
    let leaf = ca.leaf(&["localhost"]);
    let dir = TempDir::new("admin");
    let cert = dir.write("admin.crt", &leaf.cert_pem);
    let key = dir.write("admin.key", &leaf.key_pem);
    let up = upstream("api").await;
    let app = support::fusebox(&format!(
        "admin: {{ listen: 127.0.0.1:0, tls: {{ certFile: {cert}, keyFile: {key} }} }}\nupstreams:\n  api:\n    endpoints: [{}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    ))
    .await;
    let port = app.admin_addr().port();
    // https:// for the health and metrics endpoints.
    let resp = tls_client(&ca, false).get(format!("https://localhost:{port}/livez").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP is not served on it.
    let plain = tokio::time::timeout(Duration::from_secs(3), client().get(format!("http://127.0.0.1:{port}/livez").parse().unwrap())).await;
    assert!(!matches!(plain, Ok(Ok(ref r)) if r.status() == 200), "plain HTTP refused on a TLS admin listener");
    // wss:// for the state WebSocket (the integration guide's clients).
    let mut config = rustls::ClientConfig::builder().with_root_certificates(ca.roots()).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(app.admin_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "the admin listener speaks http/1.1 for WebSockets");
    let url = format!("wss://localhost:{port}/api/v2/ws/circuit-breaker");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("wss handshake");
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a first message").expect("open").expect("ok");
    let text = first.into_text().unwrap();
    assert!(text.contains("\"type\""), "{text}");
}
