//! The demo application `kiln deploy.toml` serves: a greeting from the
//! config and a small notes API on pool `main` (SQLite or PostgreSQL).

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kiln::resources::deadpool_postgres::tokio_postgres::types::ToSql;
use kiln::resources::deadpool_sqlite::rusqlite::{self, OptionalExtension};
use kiln::{App, AppConfig, BoxError, Generation, Pool};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The pool the notes live in.
const POOL: &str = "main";
/// The longest note, in characters.
const MAX_TEXT: usize = 10_000;

/// `[app]`: what the demo reads from the configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NotesConfig {
    /// The text `GET /` answers with.
    pub(crate) greeting: String,
}

impl Default for NotesConfig {
    fn default() -> Self {
        Self {
            greeting: "Hello from kiln".to_owned(),
        }
    }
}

impl AppConfig for NotesConfig {}

/// The demo application.
pub(crate) struct Notes;

impl App for Notes {
    type Config = NotesConfig;

    async fn prepare(&self, generation: &Generation<NotesConfig>) -> Result<(), BoxError> {
        let pool = generation
            .pool(POOL)
            .ok_or("the demo app needs a pool named `main`: add a [pools.main] section")?;
        if !generation.is_new(POOL) {
            return Ok(()); // a pool carried over already has the schema
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
        Ok(())
    }

    fn router(&self, generation: &Generation<NotesConfig>) -> Router {
        let state = NotesState {
            greeting: Bytes::from(generation.app().greeting.clone()),
            pool: generation.pool(POOL).cloned().expect("checked in prepare"),
        };
        Router::new()
            .route("/", get(greeting))
            .route("/notes", get(list_notes).post(create_note))
            .route("/notes/{id}", get(get_note))
            .with_state(state)
    }
}

#[derive(Clone)]
struct NotesState {
    greeting: Bytes,
    pool: Pool,
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
    let note = insert(&state.pool, text).await?;
    Ok((StatusCode::CREATED, Json(note)))
}

async fn get_note(
    State(state): State<NotesState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Note>, ApiError> {
    let Path(id) = id?;
    match fetch(&state.pool, id).await? {
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
    Ok(Json(list(&state.pool, limit).await?))
}

// === storage, on SQLite or PostgreSQL ===

async fn insert(pool: &Pool, text: String) -> Result<Note, ApiError> {
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
                .ok_or_else(|| ApiError::database("INSERT returned no row"))
        }
        _ => Err(ApiError::unsupported()),
    }
}

async fn fetch(pool: &Pool, id: i64) -> Result<Option<Note>, ApiError> {
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
        _ => Err(ApiError::unsupported()),
    }
}

async fn list(pool: &Pool, limit: u32) -> Result<Vec<Note>, ApiError> {
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
        _ => Err(ApiError::unsupported()),
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
    pool: &kiln::resources::deadpool_postgres::Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Note>, ApiError> {
    let client = pool.get().await.map_err(ApiError::database)?;
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(ApiError::database)?;
    let rows = client
        .query(&statement, params)
        .await
        .map_err(ApiError::database)?;
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
    pool: &kiln::resources::deadpool_sqlite::Pool,
    query: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let conn = pool.get().await.map_err(ApiError::database)?;
    conn.interact(query)
        .await
        .map_err(ApiError::database)?
        .map_err(ApiError::database)
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }

    fn database(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "Database error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {error}"),
        )
    }

    fn unsupported() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "pool `main` is of an unsupported kind".to_owned(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
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
