//! `slim serve`: the local engine behind an OpenAI-compatible HTTP API (see
//! `slim_worker::chat::server`). Prints `listening on http://ADDR` on stdout once it accepts
//! connections, so scripts and tests can start it on port 0 and read the port.

use anyhow::Result;
use clap::Args;
use slim_worker::chat::local::LocalChat;
use slim_worker::llm::default_model_path;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// GGUF file, a folder holding one, or a Hugging Face folder. Default: SmolLM2-135M-Instruct
    /// from `make models`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The name `/v1/models` reports and answers carry (default: the model's file name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A LoRA adapter folder to merge into the model: PEFT's layout
    /// (`adapter_model.safetensors` + `adapter_config.json`) or a finished job's `student/`
    /// folder (`adapter.safetensors` + `adapter.json`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Requests generated together at most (those that arrive while a batch runs wait for the
    /// next).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let model = args.model.clone().unwrap_or_else(default_model_path);
    let name = args.name.clone().unwrap_or_else(|| {
        model.file_name().map_or_else(
            || model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    let (max_batch, adapter) = (args.max_batch, args.adapter.clone());
    let chat = tokio::task::spawn_blocking(move || {
        LocalChat::load_adapted(&model, adapter.as_deref(), &name, max_batch)
    })
    .await??;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let server =
        slim_worker::chat::server::start(chat, SocketAddr::new(args.host, args.port), shutdown)
            .await?;
    println!("listening on http://{}", server.addr);
    std::io::stdout().flush()?;
    server.task.await??;
    Ok(())
}
