//! An in-process fake of the node daemon's `Handler` service, for driving the real
//! `virtctl` binary in tests. It keeps VMs in memory and records what it was asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironvisor_handler_api::proto::handler_server::{Handler, HandlerServer};
use ironvisor_handler_api::proto::{
    ActionResponse, AppliedObject, ApplyRequest, ApplyResponse, ConsoleChunk, ConsoleRequest,
    Event, ListRequest, ListResponse, LogChunk, LogsRequest, ObjectRef, PortForwardChunk,
    PortForwardRequest, StopRequest, VmView,
};
use serde_json::Value;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Console attempts refused with FAILED_PRECONDITION for the VM named "booting".
pub const BOOTING_REFUSALS: usize = 2;

#[derive(Debug, Default)]
pub struct State {
    /// Applied documents by (namespace, name).
    pub vms: BTreeMap<(String, String), String>,
    /// Every request, as "Rpc ns/name details".
    pub calls: Vec<String>,
    /// Console input received, by VM name.
    pub console_input: BTreeMap<String, Vec<u8>>,
    /// Console attempts, by VM name.
    pub console_attempts: BTreeMap<String, usize>,
    /// Bytes forwarded to a guest port, by "name:port", once that side ended.
    pub forwarded: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeHandler {
    pub state: Arc<Mutex<State>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ns(namespace: &str) -> String {
    if namespace.is_empty() {
        "default".to_string()
    } else {
        namespace.to_string()
    }
}

fn view(namespace: &str, name: &str, doc: &str) -> VmView {
    let mut vm: Value = serde_norway::from_str(doc).unwrap_or(Value::Null);
    let running = vm["spec"]["runStrategy"].as_str() == Some("Always");
    vm["status"] = serde_json::json!({
        "printableStatus": if running { "Running" } else { "Stopped" },
    });
    VmView {
        namespace: namespace.to_string(),
        name: name.to_string(),
        status: if running { "Running" } else { "Stopped" }.into(),
        phase: if running { "Running" } else { "" }.into(),
        ip: if running { "10.88.0.5" } else { "" }.into(),
        node: if running { "node1" } else { "" }.into(),
        // 3 minutes old, whatever the clock says.
        created_unix: now() - 180,
        ready: running,
        run_strategy: vm["spec"]["runStrategy"]
            .as_str()
            .unwrap_or("Halted")
            .into(),
        backend: if running { "qemu-tcg" } else { "" }.into(),
        vm_json: vm.to_string(),
        vmi_json: if running {
            serde_json::json!({"status": {"phase": "Running", "nodeName": "node1"}}).to_string()
        } else {
            String::new()
        },
        events: vec![Event {
            time_unix: now() - 60,
            r#type: "Normal".into(),
            reason: "Started".into(),
            message: "launcher started".into(),
        }],
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl FakeHandler {
    fn record(&self, call: String) {
        self.state.lock().unwrap().calls.push(call);
    }

    fn require(&self, r: &ObjectRef) -> Result<String, Status> {
        let key = (ns(&r.namespace), r.name.clone());
        self.state
            .lock()
            .unwrap()
            .vms
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("virtualmachine {}/{} not found", key.0, key.1))
            })
    }

    fn action(&self, rpc: &str, r: &ObjectRef) -> Result<Response<ActionResponse>, Status> {
        self.record(format!("{rpc} {}/{}", ns(&r.namespace), r.name));
        self.require(r)?;
        if r.name == "busy" {
            return Err(Status::failed_precondition(format!(
                "VM {}/busy is already being stopped",
                ns(&r.namespace)
            )));
        }
        Ok(Response::new(ActionResponse {
            message: String::new(),
        }))
    }
}

#[tonic::async_trait]
impl Handler for FakeHandler {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let ApplyRequest { yaml, source } = request.into_inner();
        self.record(format!("Apply {source}"));
        let mut objects = Vec::new();
        for doc in serde_norway::Deserializer::from_str(&yaml) {
            let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!("{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                Status::invalid_argument(format!("{source}:{at}: {e}"))
            })?;
            if value["spec"].get("bogus").is_some() {
                return Err(Status::invalid_argument(format!(
                    "{source}: unknown field `spec.bogus`, expected one of `runStrategy`, `running`, `template`"
                )));
            }
            let Some(name) = value["metadata"]["name"].as_str() else {
                return Err(Status::invalid_argument(format!(
                    "{source}: invalid VirtualMachine:\n  - metadata.name: Required value\n  - spec.template: Required value"
                )));
            };
            let namespace = ns(value["metadata"]["namespace"].as_str().unwrap_or(""));
            let text = serde_json::to_string(&value).unwrap();
            let mut state = self.state.lock().unwrap();
            let action = match state
                .vms
                .insert((namespace.clone(), name.into()), text.clone())
            {
                None => "created",
                Some(old) if old == text => "unchanged",
                Some(_) => "configured",
            };
            objects.push(AppliedObject {
                kind: value["kind"].as_str().unwrap_or("VirtualMachine").into(),
                namespace,
                name: name.into(),
                action: action.into(),
            });
        }
        Ok(Response::new(ApplyResponse { objects }))
    }

    async fn get(&self, request: Request<ObjectRef>) -> Result<Response<VmView>, Status> {
        let r = request.into_inner();
        self.record(format!("Get {}/{}", ns(&r.namespace), r.name));
        let doc = self.require(&r)?;
        Ok(Response::new(view(&ns(&r.namespace), &r.name, &doc)))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let namespace = request.into_inner().namespace;
        self.record(format!("List {namespace}"));
        let state = self.state.lock().unwrap();
        let vms = state
            .vms
            .iter()
            .filter(|((n, _), _)| namespace.is_empty() || *n == namespace)
            .map(|((n, name), doc)| view(n, name, doc))
            .collect();
        Ok(Response::new(ListResponse { vms }))
    }

    async fn delete(&self, r: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        let r = r.into_inner();
        let reply = self.action("Delete", &r)?;
        self.state
            .lock()
            .unwrap()
            .vms
            .remove(&(ns(&r.namespace), r.name.clone()));
        Ok(reply)
    }

    async fn start(&self, r: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        self.action("Start", &r.into_inner())
    }

    async fn stop(&self, r: Request<StopRequest>) -> Result<Response<ActionResponse>, Status> {
        let StopRequest {
            vm,
            force,
            grace_period_seconds,
        } = r.into_inner();
        let vm = vm.ok_or_else(|| Status::invalid_argument("Stop without a VM"))?;
        self.record(format!(
            "StopArgs {}/{} force={force} grace={grace_period_seconds}",
            ns(&vm.namespace),
            vm.name
        ));
        self.action("Stop", &vm)
    }

    async fn restart(&self, r: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        self.action("Restart", &r.into_inner())
    }

    async fn pause(&self, r: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        let mut reply = self.action("Pause", &r.into_inner())?;
        reply.get_mut().message = "vCPUs paused".into();
        Ok(reply)
    }

    async fn unpause(&self, r: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        self.action("Unpause", &r.into_inner())
    }

    type ConsoleStream = BoxStream<ConsoleChunk>;

    async fn console(
        &self,
        request: Request<Streaming<ConsoleRequest>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty console request stream"))?;
        let r = first
            .vm
            .ok_or_else(|| Status::invalid_argument("the first console request names no VM"))?;
        let name = r.name.clone();
        let attempts = {
            let mut state = self.state.lock().unwrap();
            let n = state.console_attempts.entry(name.clone()).or_default();
            *n += 1;
            *n
        };
        self.record(format!("Console {}/{name}", ns(&r.namespace)));
        let doc = self.require(&r)?;
        if !doc.contains("\"runStrategy\":\"Always\"") {
            return Err(Status::failed_precondition(format!(
                "VM {}/{name} is not running",
                ns(&r.namespace)
            )));
        }
        if name == "booting" && attempts <= BOOTING_REFUSALS {
            return Err(Status::failed_precondition(format!(
                "VM {}/booting has no console yet: its launcher is starting",
                ns(&r.namespace)
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<ConsoleChunk, Status>>(16);
        let state = self.state.clone();
        tokio::spawn(async move {
            let out = |bytes: &[u8]| {
                Ok(ConsoleChunk {
                    output: bytes.to_vec(),
                })
            };
            if tx
                .send(out(b"[    0.000000] Linux version 6.1.0\r\n"))
                .await
                .is_err()
            {
                return;
            }
            loop {
                match input.next().await {
                    Some(Ok(req)) => {
                        state
                            .lock()
                            .unwrap()
                            .console_input
                            .entry(name.clone())
                            .or_default()
                            .extend_from_slice(&req.input);
                        let echo = [b"echo:".as_slice(), &req.input, b"\r\n"].concat();
                        if tx.send(out(&echo)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) => return,
                    None => break,
                }
            }
            if name == "forever" {
                // The VM keeps running after the client stops typing.
                tx.closed().await;
                return;
            }
            let _ = tx.send(out(b"reboot: Power down\r\n")).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PortForwardStream = BoxStream<PortForwardChunk>;

    /// A guest port that greets and half-closes at once, then keeps what it receives
    /// until the client's end-of-file; port 9 refuses.
    async fn port_forward(
        &self,
        request: Request<Streaming<PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty port forward request stream"))?;
        let r = first
            .vm
            .ok_or_else(|| Status::invalid_argument("the first request names no VM"))?;
        let port = first.port;
        self.record(format!(
            "PortForward {}/{} {port}",
            ns(&r.namespace),
            r.name
        ));
        self.require(&r)?;
        if port == 9 {
            return Err(Status::failed_precondition(format!(
                "port 9 of VirtualMachine {}/{}: connecting to the guest at 10.0.2.2:9: \
                 Connection refused (os error 111)",
                ns(&r.namespace),
                r.name
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<PortForwardChunk, Status>>(16);
        let state = self.state.clone();
        let key = format!("{}:{port}", r.name);
        tokio::spawn(async move {
            let greeting = format!("hello from port {port}\n").into_bytes();
            for chunk in [greeting, Vec::new()] {
                let eof = chunk.is_empty();
                let _ = tx.send(Ok(PortForwardChunk { data: chunk, eof })).await;
            }
            let mut received = Vec::new();
            while let Some(Ok(request)) = input.next().await {
                received.extend_from_slice(&request.data);
                if request.eof {
                    break;
                }
            }
            state.lock().unwrap().forwarded.insert(key, received);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = BoxStream<LogChunk>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let LogsRequest { vm, follow } = request.into_inner();
        let r = vm.ok_or_else(|| Status::invalid_argument("Logs without a VM"))?;
        self.record(format!(
            "Logs {}/{} follow={follow}",
            ns(&r.namespace),
            r.name
        ));
        self.require(&r)?;
        let mut chunks = vec![
            b"launcher: starting VM\n".to_vec(),
            b"launcher: guest running\n".to_vec(),
        ];
        if follow {
            chunks.push(b"launcher: guest powered off\n".to_vec());
        }
        let stream = tokio_stream::iter(chunks)
            .throttle(Duration::from_millis(20))
            .map(|data| Ok(LogChunk { data }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A fake daemon serving on a socket in a temporary directory.
pub struct FakeDaemon {
    pub handler: FakeHandler,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("handler.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let handler = FakeHandler::default();
        let service = HandlerServer::new(handler.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            handler,
            socket,
            _dir: dir,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn calls(&self) -> Vec<String> {
        self.handler.state.lock().unwrap().calls.clone()
    }

    pub fn console_input(&self, vm: &str) -> Vec<u8> {
        self.handler
            .state
            .lock()
            .unwrap()
            .console_input
            .get(vm)
            .cloned()
            .unwrap_or_default()
    }
}

/// The real `virtctl` binary, talking to the daemon at `socket` only (nothing from the
/// caller's environment), killed when dropped.
pub fn virtctl_command(socket: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtctl"));
    cmd.env_remove("IRONVISOR_SOCKET")
        .env_remove("VIRTCTL_LOG")
        .arg("--socket")
        .arg(socket)
        .kill_on_drop(true);
    cmd
}
