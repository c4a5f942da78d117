use std::str::FromStr;

use deadpool_postgres::{Client, Connect, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use kiln_config::PoolConfig;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::{Client as PgClient, Config as PgConfig, Error, NoTls};

use crate::ResourceError;

pub(crate) fn build(name: &str, config: &PoolConfig) -> Result<Pool, ResourceError> {
    let pg_config = PgConfig::from_str(config.url.expose())
        .map_err(|e| ResourceError::new(name, "invalid url", &e))?;
    let handle = Handle::try_current()
        .map_err(|e| ResourceError::new(name, "no tokio runtime to drive connections", &e))?;
    let manager = Manager::from_connect(
        pg_config,
        OnRuntime(handle),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .runtime(Runtime::Tokio1)
        .max_size(config.max_size)
        .wait_timeout(Some(config.wait_timeout))
        .create_timeout(Some(config.wait_timeout))
        .build()
        .map_err(|e| ResourceError::new(name, "cannot build the pool", &e))
}

pub(crate) async fn checkout_and_ping(name: &str, pool: &Pool) -> Result<Client, ResourceError> {
    let client = pool
        .get()
        .await
        .map_err(|e| ResourceError::new(name, "cannot open a connection", &e))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| ResourceError::new(name, "ping failed", &e))?;
    Ok(client)
}

/// Connects and drives every connection on one runtime (the one the pool was
/// built on), so a connection opened from a worker thread does not live and
/// die with that worker's runtime.
struct OnRuntime(Handle);

impl Connect for OnRuntime {
    fn connect(
        &self,
        pg_config: &PgConfig,
    ) -> BoxFuture<'_, Result<(PgClient, JoinHandle<()>), Error>> {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let home_config = pg_config.clone();
            let task = self.0.spawn(async move {
                match home_config.connect(NoTls).await {
                    Ok((client, connection)) => {
                        if tx.send(Ok(client)).is_ok() {
                            drive(connection).await;
                        }
                    }
                    Err(e) => drop(tx.send(Err(e))),
                }
            });
            match rx.await {
                Ok(Ok(client)) => Ok((client, task)),
                Ok(Err(e)) => Err(e),
                // The home runtime is shutting down: connect on this one.
                Err(_) => {
                    let (client, connection) = pg_config.connect(NoTls).await?;
                    Ok((client, tokio::spawn(drive(connection))))
                }
            }
        })
    }
}

async fn drive(
    connection: tokio_postgres::Connection<
        tokio_postgres::Socket,
        tokio_postgres::tls::NoTlsStream,
    >,
) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "PostgreSQL connection closed");
    }
}
