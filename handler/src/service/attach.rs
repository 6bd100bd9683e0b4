//! Streaming reads of a VM's launcher: the serial console (both ways) and the launcher's
//! log.

use super::*;

impl HandlerService {
    /// Connects to the launcher's console socket and pumps bytes both ways. Waits for the
    /// socket of a launcher that is still starting; the launcher replays its boot-log
    /// ring to each new client, so nothing printed so far is missed.
    pub(super) async fn attach_console(
        &self,
        key: &VmKey,
        initial_input: Vec<u8>,
        mut input: Streaming<ConsoleRequest>,
    ) -> Result<BoxStream<ConsoleChunk>, ServiceError> {
        let deadline = tokio::time::Instant::now() + CONSOLE_SOCKET_WAIT;
        let stream = loop {
            let snap = self.snapshot(key).await?;
            let Some(launcher) = snap.launcher else {
                return Err(ServiceError::NotRunning {
                    key: key.clone(),
                    detail: "",
                });
            };
            match UnixStream::connect(&launcher.console_socket).await {
                Ok(stream) => break stream,
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(ServiceError::Console {
                        key: key.clone(),
                        path: launcher.console_socket.clone(),
                        reason: error.to_string(),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        info!(vm = %key, "console attached");
        let (mut reader, mut writer) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Result<ConsoleChunk, Status>>(64);
        let out_key = key.clone();
        let out_tx = tx.clone();
        tokio::spawn(
            async move {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let read = tokio::select! {
                        read = reader.read(&mut buffer) => read,
                        // The client went away (detached, or its connection dropped).
                        () = out_tx.closed() => break,
                    };
                    match read {
                        Ok(0) => break,
                        Ok(n) => {
                            let chunk = ConsoleChunk {
                                output: buffer[..n].to_vec(),
                            };
                            if out_tx.send(Ok(chunk)).await.is_err() {
                                break;
                            }
                        }
                        Err(error) => {
                            debug!(vm = %out_key, %error, "console socket read failed");
                            break;
                        }
                    }
                }
                debug!(vm = %out_key, "console output ended");
            }
            .in_current_span(),
        );
        let in_key = key.clone();
        tokio::spawn(
            async move {
                if !initial_input.is_empty() && writer.write_all(&initial_input).await.is_err() {
                    return;
                }
                while let Some(message) = input.next().await {
                    match message {
                        Ok(request) if request.input.is_empty() => {}
                        Ok(request) => {
                            if writer.write_all(&request.input).await.is_err() {
                                break;
                            }
                        }
                        Err(status) => {
                            debug!(vm = %in_key, %status, "console input stream ended");
                            break;
                        }
                    }
                }
                // The client's input ended, but it may still be reading (`virtctl console
                // </dev/null`): keep the launcher connection whole until the client is
                // gone, since a half-close makes the launcher drop the connection.
                tx.closed().await;
                let _ = writer.shutdown().await;
                debug!(vm = %in_key, "console detached");
            }
            .in_current_span(),
        );
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Streams the launcher log of the current (or last) run; with `follow`, keeps
    /// sending new output until the instance ends.
    pub(super) async fn stream_logs(
        &self,
        key: &VmKey,
        follow: bool,
    ) -> Result<BoxStream<LogChunk>, ServiceError> {
        self.snapshot(key).await?;
        let path = self
            .runtime
            .context()
            .config
            .vm_dir(key)
            .join(launcher_proc::LOG_FILE_NAME);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| ServiceError::Logs {
                key: key.clone(),
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "has not run yet: there is no launcher log".to_string()
                } else {
                    format!("cannot read launcher log {}: {e}", path.display())
                },
            })?;
        let (tx, rx) = mpsc::channel::<Result<LogChunk, Status>>(16);
        let store = Arc::clone(self.store());
        let key = key.clone();
        tokio::spawn(
            async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut position: u64 = 0;
                let mut idle_checks = 0u32;
                loop {
                    match file.read(&mut buffer).await {
                        Ok(0) => {
                            if !follow {
                                break;
                            }
                            // A new run truncates the log: start over.
                            if let Ok(meta) = tokio::fs::metadata(&path).await {
                                if meta.len() < position {
                                    position = 0;
                                    if file.seek(SeekFrom::Start(0)).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            idle_checks += 1;
                            if idle_checks.is_multiple_of(5) {
                                let owned = key.clone();
                                let running = store
                                    .call(move |s| s.get(&owned))
                                    .await
                                    .ok()
                                    .flatten()
                                    .is_some_and(|s| s.launcher.is_some());
                                if !running || tx.is_closed() {
                                    break;
                                }
                            }
                            tokio::time::sleep(LOG_POLL).await;
                        }
                        Ok(n) => {
                            idle_checks = 0;
                            position += n as u64;
                            let chunk = LogChunk {
                                data: buffer[..n].to_vec(),
                            };
                            if tx.send(Ok(chunk)).await.is_err() {
                                break;
                            }
                        }
                        Err(error) => {
                            let _ = tx
                                .send(Err(Status::internal(format!(
                                    "VirtualMachine {key}: reading {}: {error}",
                                    path.display()
                                ))))
                                .await;
                            break;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
