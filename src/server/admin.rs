//! The admin HTTP endpoint, off the hot path on its own thread: `/metrics` (Prometheus text),
//! `/health` (every group running, disk healthy, a leader known) and `/readyz` (every group
//! recovered and serving).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use crate::runtime::{Shared, NO_LEADER};

pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    pub fn start(
        addr: SocketAddr,
        registry: Registry,
        shared: Arc<Shared>,
    ) -> Result<AdminServer, String> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(|e| {
            format!("cannot serve the admin endpoint on {addr}: {e}; is the admin_port in use?")
        })?);
        let srv = server.clone();
        let join = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || serve(&srv, &registry, &shared))
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
        Ok(AdminServer {
            server,
            join: Some(join),
        })
    }

    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn serve(server: &tiny_http::Server, registry: &Registry, shared: &Shared) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let (code, content_type, body) = match path.as_str() {
            "/metrics" => {
                let mut text = String::new();
                match encode(&mut text, registry) {
                    Ok(()) => (
                        200,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    ),
                    Err(e) => (500, "text/plain", format!("encoding metrics failed: {e}\n")),
                }
            }
            "/health" => {
                let groups = shared.healthy.len();
                let disk_ok = shared.healthy.iter().all(|h| h.load(Ordering::Acquire));
                let leaders_ok = shared
                    .leaders
                    .iter()
                    .all(|l| l.load(Ordering::Acquire) != NO_LEADER);
                let ok = disk_ok && leaders_ok;
                let reason = if !disk_ok {
                    "a group's WAL failed"
                } else if !leaders_ok {
                    "a group has no leader"
                } else {
                    ""
                };
                (
                    if ok { 200 } else { 503 },
                    "application/json",
                    format!(
                        "{{\"health\":\"{ok}\",\"groups\":{groups},\"reason\":\"{reason}\"}}\n"
                    ),
                )
            }
            "/readyz" => {
                let ready = shared.ready.iter().all(|r| r.load(Ordering::Acquire));
                (
                    if ready { 200 } else { 503 },
                    "text/plain",
                    if ready {
                        "ok\n".into()
                    } else {
                        "starting\n".into()
                    },
                )
            }
            _ => (
                404,
                "text/plain",
                "not found: try /metrics, /health or /readyz\n".into(),
            ),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            .expect("static header is valid");
        let _ = request.respond(
            tiny_http::Response::from_string(body)
                .with_status_code(code)
                .with_header(header),
        );
    }
}
