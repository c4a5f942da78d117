//! `setup-db`: the PostgreSQL database and table the database-backed runs use.

use anyhow::Context as _;

use crate::Common;

pub(crate) async fn connect_pg(c: &Common, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let url = format!("postgres://{}@{}/{db}", c.pg_user, c.pg_addr);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub(crate) async fn setup_db(c: &Common) -> anyhow::Result<()> {
    let admin = connect_pg(c, "postgres").await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&c.pg_db])
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", c.pg_db))
            .await?;
    }
    let db = connect_pg(c, &c.pg_db).await?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, text TEXT NOT NULL)",
    )
    .await?;
    let count: i64 = db
        .query_one("SELECT count(*) FROM notes", &[])
        .await?
        .get(0);
    if count < 200 {
        db.batch_execute(
            "INSERT INTO notes (text) SELECT 'note number ' || g FROM generate_series(1, 200) g",
        )
        .await?;
    }
    println!("database {} ready on {}", c.pg_db, c.pg_addr);
    Ok(())
}
