//! `slim serve`: an OpenAI-compatible HTTP server over the local engine, so a distilled student
//! can be deployed and queried like a hosted model, and the `openai` teacher backend can be
//! tested against a real server.
//!
//! Routes: `POST /v1/chat/completions` (messages, max_tokens or max_completion_tokens,
//! temperature, top_p, seed; no streaming, n = 1), `GET /v1/models`, `GET /healthz`. Requests
//! go to one engine thread ([`LocalChat`]), which batches those that arrive together. Bad
//! requests get 400 with an OpenAI-style JSON error saying what is wrong.

use super::local::{LocalChat, PromptTooLong};
use super::wire::{
    ChatCompletionRequest, ChatCompletionResponse, Choice, ErrorBody, ErrorDetail, ModelCard,
    ModelList, Usage, WireMessage,
};
use super::{ChatBackend, ChatRequest};
use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::info;

/// Default `max_tokens` when a request names none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

struct AppState {
    chat: LocalChat,
    created: u64,
    served: AtomicU64,
}

/// The server's routes over an engine.
pub fn router(chat: LocalChat) -> Router {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = Arc::new(AppState {
        chat,
        created,
        served: AtomicU64::new(0),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; try POST /v1/chat/completions, GET /v1/models or GET /healthz",
            )
        })
        .with_state(state)
}

/// A server listening on a socket.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `addr` (port 0 picks a free one) and serves until `shutdown` resolves.
pub async fn start(
    chat: LocalChat,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (is another server on that port?)"))?;
    let addr = listener.local_addr()?;
    let app = router(chat);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    info!(%addr, "serving the OpenAI-compatible API");
    Ok(RunningServer { addr, task })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.into(),
            kind: kind.into(),
        },
    };
    (status, axum::Json(body)).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.chat.model().to_string(),
            object: "model".into(),
            created: state.created,
            owned_by: "slim".into(),
        }],
    })
    .into_response()
}

/// Checks a request and turns it into the engine's terms, or says what is wrong.
fn to_chat_request(body: &[u8]) -> Result<ChatRequest, String> {
    // The path names the field at fault (`messages.0.content: invalid type ...`).
    let request: ChatCompletionRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
            .map_err(|e| format!("the body is not a chat completion request: {e}"))?;
    if request.messages.is_empty() {
        return Err("messages must hold at least one message".into());
    }
    if let Some(m) = request
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(format!(
            "unsupported message role {:?} (use system, user or assistant)",
            m.role
        ));
    }
    if request.stream == Some(true) {
        return Err("stream = true is not supported; ask without streaming".into());
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err("only n = 1 is supported".into());
    }
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(format!("temperature must be in [0, 2], got {temperature}"));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(format!("top_p must be in (0, 1], got {top_p}"));
    }
    Ok(ChatRequest {
        messages: request.messages,
        max_tokens,
        temperature,
        top_p,
        seed: request.seed.unwrap_or(0),
    })
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request = match to_chat_request(&body) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let answer = match state.chat.complete_one(request).await {
        Ok(answer) => answer,
        Err(e) if e.is::<PromptTooLong>() => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    let n = state.served.fetch_add(1, Ordering::Relaxed);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    axum::Json(ChatCompletionResponse {
        id: format!("chatcmpl-slim-{n}"),
        object: "chat.completion".into(),
        created,
        model: state.chat.model().to_string(),
        choices: vec![Choice {
            index: 0,
            message: WireMessage {
                role: "assistant".into(),
                content: answer.content,
            },
            finish_reason: Some(answer.finish_reason),
        }],
        usage: Some(Usage {
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.completion_tokens,
            total_tokens: answer.prompt_tokens + answer.completion_tokens,
        }),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_explained() {
        let err = |body: &str| to_chat_request(body.as_bytes()).unwrap_err();
        assert!(err("{").contains("not a chat completion request"));
        assert!(err(r#"{"messages": []}"#).contains("at least one message"));
        assert!(err(r#"{"messages": [{"role": "robot", "content": "x"}]}"#).contains("role"));
        let user = r#"[{"role": "user", "content": "hi"}]"#;
        assert!(err(&format!(r#"{{"messages": {user}, "stream": true}}"#)).contains("stream"));
        assert!(err(&format!(r#"{{"messages": {user}, "top_p": 0}}"#)).contains("top_p"));
        assert!(err(&format!(r#"{{"messages": {user}, "max_tokens": 0}}"#)).contains("max_tokens"));
        let ok = to_chat_request(
            format!(r#"{{"model": "x", "messages": {user}, "max_completion_tokens": 7, "temperature": 0, "seed": 3, "user": "u1"}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((ok.max_tokens, ok.temperature, ok.seed), (7, 0.0, 3));
    }
}
