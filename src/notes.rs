//! The demo application `kiln deploy.toml` serves: a greeting from the
//! config, a small notes API on pool `main` (SQLite or PostgreSQL), a
//! WebSocket echo, and (with `app.debug_routes`) routes that misbehave on
//! purpose, to see kiln's limits at work.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kiln::resources::deadpool_postgres::tokio_postgres;
use kiln::resources::deadpool_sqlite::rusqlite;
use kiln::resources::{BoundedGet, PostgresPool, SqlitePool};
use kiln::{App, AppConfig, BoxError, ErrorChain, Generation, Pool};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// The pool the notes live in.
const POOL: &str = "main";
/// The longest note, in characters.
const MAX_TEXT: usize = 10_000;
/// The longest query `GET /slow/{secs}` runs, in seconds.
const MAX_SLOW: u64 = 600;

/// `[app]`: what the demo reads from the configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NotesConfig {
    /// The text `GET /` answers with.
    pub(crate) greeting: String,
    /// Serve `GET /debug/panic` (a handler that panics),
    /// `GET /debug/sleep?ms=N` (a handler that takes N ms) and
    /// `GET /debug/stream?chunks=N&ms=M` (N lines, one every M ms).
    pub(crate) debug_routes: bool,
}

impl Default for NotesConfig {
    fn default() -> Self {
        Self {
            greeting: "Hello from kiln".to_owned(),
            debug_routes: false,
        }
    }
}

impl AppConfig for NotesConfig {}

/// The demo application.
pub(crate) struct Notes;

impl App for Notes {
    type Config = NotesConfig;
    /// The pool `main`, found and given its schema.
    type State = Pool;

    async fn prepare(
        &self,
        generation: &Generation<NotesConfig>,
        _: Option<&Pool>,
    ) -> Result<Pool, BoxError> {
        let pool = generation
            .pool(POOL)
            .ok_or("the demo app needs a pool named `main`: add a [pools.main] section")?;
        if !generation.is_new(POOL) {
            return Ok(pool.clone()); // a pool carried over already has the schema
        }
        match pool {
            Pool::Sqlite(pool) => {
                pool.get()
                    .await?
                    .interact(|conn| {
                        conn.execute_batch(
                            "CREATE TABLE IF NOT EXISTS notes (
                                id INTEGER PRIMARY KEY AUTOINCREMENT,
                                text TEXT NOT NULL)",
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())??;
            }
            Pool::Postgres(pool) => {
                pool.get()
                    .await?
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, text TEXT NOT NULL)",
                    )
                    .await?;
            }
            _ => return Err("pool `main` is of a kind the demo app does not support".into()),
        }
        Ok(pool.clone())
    }

    fn router(&self, generation: &Generation<NotesConfig>, pool: &Pool) -> Router {
        let wait = generation.config().pools[POOL].wait_timeout;
        let state = NotesState {
            greeting: Bytes::from(generation.app().greeting.clone()),
            pool: pool.clone(),
            retry_after: wait.as_secs().max(1),
        };
        let router = Router::new()
            .route("/", get(greeting))
            .route("/notes", get(list_notes).post(create_note))
            .route("/notes/{id}", get(get_note))
            .route("/slow/{secs}", get(slow))
            .route("/ws", get(echo))
            .with_state(state);
        if generation.app().debug_routes {
            router
                .route("/debug/panic", get(panics))
                .route("/debug/sleep", get(sleep))
                .route("/debug/stream", get(stream))
        } else {
            router
        }
    }
}

#[derive(Clone)]
struct NotesState {
    greeting: Bytes,
    pool: Pool,
    /// Seconds a client should wait before retrying after a database
    /// outage answer: the pool's `wait_timeout`, at least 1.
    retry_after: u64,
}

#[derive(Debug, Serialize)]
struct Note {
    id: i64,
    text: String,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Deserialize)]
struct ListParams {
    limit: Option<u32>,
}

async fn greeting(State(state): State<NotesState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.greeting,
    )
}

/// A WebSocket that sends every text or binary message back.
async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let reply = match message {
                Message::Text(_) | Message::Binary(_) => message,
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// A handler with a bug.
async fn panics() -> &'static str {
    panic!("the debug route panics")
}

#[derive(Deserialize)]
struct SleepParams {
    ms: u64,
}

/// Answers after `ms` milliseconds; logs when it starts.
async fn sleep(
    params: Result<Query<SleepParams>, QueryRejection>,
) -> Result<&'static str, ApiError> {
    let Query(SleepParams { ms }) = params?;
    tracing::info!(ms, "debug: sleeping");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok("slept")
}

#[derive(Deserialize)]
struct StreamParams {
    chunks: u32,
    ms: u64,
}

/// A response streamed as `chunks` lines `chunk N`, one every `ms`
/// milliseconds (a slow download); logs when it starts.
async fn stream(params: Result<Query<StreamParams>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(StreamParams { chunks, ms }) = params?;
    if chunks > 10_000 || ms > 60_000 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunks must be at most 10000 and ms at most 60000".to_owned(),
        ));
    }
    tracing::info!(chunks, ms, "debug: streaming");
    let lines = futures_util::stream::unfold(0, move |n| async move {
        if n == chunks {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Some((
            Ok::<_, std::convert::Infallible>(format!("chunk {n}\n")),
            n + 1,
        ))
    });
    Ok(axum::body::Body::from_stream(lines).into_response())
}

async fn create_note(
    State(state): State<NotesState>,
    body: Result<Json<NewNote>, JsonRejection>,
) -> Result<(StatusCode, Json<Note>), ApiError> {
    let Json(NewNote { text }) = body?;
    let length = text.chars().count();
    if length == 0 || length > MAX_TEXT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("text: expected 1 to {MAX_TEXT} characters, found {length}"),
        ));
    }
    let note = insert(&state.pool, text)
        .await
        .map_err(|e| e.answer(state.retry_after))?;
    tracing::debug!(id = note.id, "Note created");
    Ok((StatusCode::CREATED, Json(note)))
}

async fn get_note(
    State(state): State<NotesState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Note>, ApiError> {
    let Path(id) = id?;
    match fetch(&state.pool, id)
        .await
        .map_err(|e| e.answer(state.retry_after))?
    {
        Some(note) => Ok(Json(note)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no note with id {id}"),
        )),
    }
}

async fn list_notes(
    State(state): State<NotesState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<Note>>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(20).min(100);
    let notes = list(&state.pool, limit)
        .await
        .map_err(|e| e.answer(state.retry_after))?;
    Ok(Json(notes))
}

/// `GET /slow/{secs}`: a query that takes `secs` seconds (at most
/// [`MAX_SLOW`]), holding a pool connection (and on SQLite a blocking
/// thread) meanwhile, like a slow report; to watch what a drain does with
/// one.
async fn slow(
    State(state): State<NotesState>,
    secs: Result<Path<u64>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(secs) = secs?;
    if secs > MAX_SLOW {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("secs: expected at most {MAX_SLOW}, found {secs}"),
        ));
    }
    tracing::info!(secs, "Slow query started");
    sleep_query(&state.pool, secs)
        .await
        .map_err(|e| e.answer(state.retry_after))?;
    Ok(format!("slept {secs}s\n"))
}

// === storage, on SQLite or PostgreSQL ===

async fn insert(pool: &Pool, text: String) -> Result<Note, DbError> {
    match pool {
        Pool::Sqlite(pool) => {
            sqlite(pool, move |conn| {
                conn.query_row(
                    "INSERT INTO notes (text) VALUES (?1) RETURNING id, text",
                    [&text],
                    note_row,
                )
            })
            .await
        }
        Pool::Postgres(pool) => {
            let mut inserted = postgres(
                pool,
                "INSERT INTO notes (text) VALUES ($1) RETURNING id, text",
                &[&text],
            )
            .await?;
            inserted
                .pop()
                .ok_or_else(|| DbError::Query("INSERT returned no row".into()))
        }
        _ => Err(DbError::Unsupported),
    }
}

/// A query that takes `secs` seconds.
async fn sleep_query(pool: &Pool, secs: u64) -> Result<(), DbError> {
    match pool {
        Pool::Sqlite(pool) => {
            sqlite(pool, move |conn| {
                std::thread::sleep(std::time::Duration::from_secs(secs));
                conn.query_row("SELECT 1", [], |_| Ok(()))
            })
            .await
        }
        Pool::Postgres(pool) => {
            #[allow(clippy::cast_precision_loss)] // at most MAX_SLOW
            let secs = secs as f64;
            let client = pool
                .get_bounded()
                .await
                .map_err(|e| DbError::Unavailable(e.into()))?;
            client
                .execute("SELECT pg_sleep($1)", &[&secs])
                .await
                .map_err(DbError::postgres)?;
            Ok(())
        }
        _ => Err(DbError::Unsupported),
    }
}

async fn fetch(pool: &Pool, id: i64) -> Result<Option<Note>, DbError> {
    match pool {
        Pool::Sqlite(pool) => {
            sqlite(pool, move |conn| {
                conn.query_row("SELECT id, text FROM notes WHERE id = ?1", [id], note_row)
                    .optional()
            })
            .await
        }
        Pool::Postgres(pool) => {
            Ok(
                postgres(pool, "SELECT id, text FROM notes WHERE id = $1", &[&id])
                    .await?
                    .pop(),
            )
        }
        _ => Err(DbError::Unsupported),
    }
}

async fn list(pool: &Pool, limit: u32) -> Result<Vec<Note>, DbError> {
    match pool {
        Pool::Sqlite(pool) => {
            sqlite(pool, move |conn| {
                let mut statement =
                    conn.prepare_cached("SELECT id, text FROM notes ORDER BY id DESC LIMIT ?1")?;
                statement.query_map([limit], note_row)?.collect()
            })
            .await
        }
        Pool::Postgres(pool) => {
            postgres(
                pool,
                "SELECT id, text FROM notes ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
        }
        _ => Err(DbError::Unsupported),
    }
}

fn note_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Note> {
    Ok(Note {
        id: row.get(0)?,
        text: row.get(1)?,
    })
}

/// Runs `sql` (cached as a prepared statement per connection) on a pooled
/// PostgreSQL connection; every notes query returns `(id, text)` rows.
async fn postgres(
    pool: &PostgresPool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Note>, DbError> {
    let client = pool
        .get_bounded()
        .await
        .map_err(|e| DbError::Unavailable(e.into()))?;
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(DbError::postgres)?;
    let rows = client
        .query(&statement, params)
        .await
        .map_err(DbError::postgres)?;
    Ok(rows
        .iter()
        .map(|row| Note {
            id: row.get(0),
            text: row.get(1),
        })
        .collect())
}

/// Runs `query` on a pooled SQLite connection (on the blocking pool).
async fn sqlite<T: Send + 'static>(
    pool: &SqlitePool,
    query: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, DbError> {
    let conn = pool
        .get_bounded()
        .await
        .map_err(|e| DbError::Unavailable(e.into()))?;
    conn.interact(query)
        .await
        .map_err(|e| DbError::Query(e.to_string().into()))?
        .map_err(|e| match e.sqlite_error_code() {
            // Another writer held the database past busy_timeout.
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                DbError::Unavailable(e.into())
            }
            _ => DbError::Query(e.into()),
        })
}

/// Why a query failed, as the handlers tell clients apart: the database is
/// away or overloaded (worth a retry), or the query itself failed (a bug).
#[derive(Debug)]
enum DbError {
    /// No connection within `wait_timeout` (deadpool's `PoolError`:
    /// `Timeout` or `Backend`), a connection lost mid-query, or a statement
    /// cancelled by `statement_timeout` or a server shutdown.
    Unavailable(BoxError),
    /// The query failed for another reason.
    Query(BoxError),
    /// Pool `main` is of a kind the demo does not support.
    Unsupported,
}

impl DbError {
    fn postgres(error: tokio_postgres::Error) -> Self {
        let retryable = match error.code() {
            // No server error: the connection broke or timed out.
            None => true,
            Some(code) => {
                code.code().starts_with("08") // connection exception
                    || [SqlState::QUERY_CANCELED, SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW, SqlState::TOO_MANY_CONNECTIONS].contains(code)
            }
        };
        if retryable {
            Self::Unavailable(error.into())
        } else {
            Self::Query(error.into())
        }
    }

    /// The answer for a client: 503 with `Retry-After` when the database is
    /// unavailable, 500 otherwise; never the driver's text, which is logged
    /// here with its causes.
    fn answer(self, retry_after: u64) -> ApiError {
        match self {
            Self::Unavailable(e) => {
                tracing::warn!(error = %ErrorChain(&*e), "Database unavailable");
                ApiError {
                    retry_after: Some(retry_after),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the database is unavailable; retry later".to_owned(),
                    )
                }
            }
            Self::Query(e) => {
                tracing::error!(error = %ErrorChain(&*e), "Database query failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the database query failed; the server log has the details".to_owned(),
                )
            }
            Self::Unsupported => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "pool `main` is of an unsupported kind".to_owned(),
            ),
        }
    }
}

/// An error answer: a status, `{"error": "..."}`, and `Retry-After` when
/// a retry may succeed.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        Self {
            status,
            message,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Request rejections keep axum's status (400 for malformed JSON, 422 for
/// a body of the wrong shape, 415 without a JSON content type) with a JSON body.
macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(rejection: $rejection) -> Self {
                Self::new(rejection.status(), rejection.body_text())
            }
        }
    )*};
}
from_rejection!(JsonRejection, PathRejection, QueryRejection);
