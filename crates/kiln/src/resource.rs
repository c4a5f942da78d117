//! The application's own resources: things built from their own config
//! section (`[resources.NAME]`), warmed before they are published, carried
//! into the next generation while their section is unchanged.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, try_join_all};
use kiln_config::{ConfigError, ErrorKind};
use kiln_resources::Homes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::catch_panic;
use crate::{BoxError, BuildError};
use kiln_resources::{ResourceError, within};

/// An expensive thing built from its own config section and warmed before
/// any request can reach it: an HTTP client that pre-connects, a compiled
/// template set, a loaded model.
///
/// Register it with [`Builder::resource`](crate::Builder::resource); read it
/// in the app with [`Generation::resource`](crate::Generation::resource). A
/// resource whose section is unchanged by a reload is carried into the next
/// generation as is; a changed one is built and warmed anew before the swap,
/// and the old one is dropped after the last request holding it ends.
///
/// # Examples
///
/// ```
/// use kiln::{BoxError, Resource};
///
/// #[derive(serde::Deserialize)]
/// struct TemplatesConfig {
///     greeting: String,
/// }
///
/// struct Templates {
///     page: String,
/// }
///
/// impl Resource for Templates {
///     type Config = TemplatesConfig;
///
///     async fn build(_name: &str, config: TemplatesConfig) -> Result<Self, BoxError> {
///         Ok(Templates { page: format!("<h1>{}</h1>", config.greeting) })
///     }
/// }
/// ```
pub trait Resource: Sized + Send + Sync + 'static {
    /// The type of its `[resources.NAME]` section.
    type Config: DeserializeOwned + Send + 'static;

    /// Builds the resource from its section.
    fn build(
        name: &str,
        config: Self::Config,
    ) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Pays first-use costs (connect, load, compile) before the resource is
    /// published. The default does nothing.
    fn warm(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }
}

/// A built resource, type-erased.
pub(crate) type Built = Arc<dyn Any + Send + Sync>;

/// The registered resources: name → how to check and build its section;
/// and where the PostgreSQL pools built with them drive their connections.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    factories: BTreeMap<String, Arc<dyn Factory>>,
    /// The runtimes that drive PostgreSQL connections; `None`: the runtime
    /// that builds the pool.
    pub(crate) homes: Option<Homes>,
}

trait Factory: Send + Sync {
    fn check(&self, section: &Value) -> Result<(), (String, String)>;
    fn build<'a>(&'a self, name: &'a str, section: Value)
    -> BoxFuture<'a, Result<Built, BoxError>>;
}

struct Typed<R>(std::marker::PhantomData<fn() -> R>);

impl<R: Resource> Factory for Typed<R> {
    fn check(&self, section: &Value) -> Result<(), (String, String)> {
        parse::<R::Config>(section.clone()).map(drop)
    }

    fn build<'a>(
        &'a self,
        name: &'a str,
        section: Value,
    ) -> BoxFuture<'a, Result<Built, BoxError>> {
        Box::pin(async move {
            let config = parse::<R::Config>(section).map_err(|(path, e)| format!("{path}: {e}"))?;
            let resource = R::build(name, config).await?;
            resource.warm().await?;
            Ok(Arc::new(resource) as Built)
        })
    }
}

fn parse<C: DeserializeOwned>(section: Value) -> Result<C, (String, String)> {
    serde_path_to_error::deserialize(section)
        .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
}

impl Registry {
    pub(crate) fn register<R: Resource>(&mut self, name: &str) {
        self.factories.insert(
            name.to_owned(),
            Arc::new(Typed::<R>(std::marker::PhantomData)),
        );
    }

    /// Checks every `[resources.NAME]` section against its registered type;
    /// a section nobody registered is an error.
    pub(crate) fn check(
        &self,
        sections: &BTreeMap<String, Value>,
        file: &Path,
    ) -> Result<(), ConfigError> {
        let type_error = |path: String, message: String| {
            ConfigError::new(file, ErrorKind::Type { path, message })
        };
        if let Some(name) = sections
            .keys()
            .find(|name| !self.factories.contains_key(*name))
        {
            return Err(type_error(
                format!("resources.{name}"),
                format!(
                    "no resource is registered under this name (registered: {})",
                    self.names().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for (name, factory) in &self.factories {
            factory
                .check(&section(sections, name))
                .map_err(|(path, message)| {
                    let path = match path.as_str() {
                        "." => format!("resources.{name}"),
                        _ => format!("resources.{name}.{path}"),
                    };
                    type_error(path, message)
                })?;
        }
        Ok(())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds and warms every registered resource concurrently, except those
    /// `carry` returns, each within `timeout`.
    pub(crate) async fn build_all(
        &self,
        sections: &BTreeMap<String, Value>,
        timeout: Duration,
        carry: impl Fn(&str) -> Option<Built>,
    ) -> Result<BTreeMap<String, Built>, BuildError> {
        let builds = self.factories.iter().map(|(name, factory)| {
            let carried = carry(name);
            let section = section(sections, name);
            async move {
                if let Some(built) = carried {
                    return Ok((name.clone(), built));
                }
                let started = Instant::now();
                tracing::info!(resource = %name, "Warming resource");
                let building = catch_panic(|| format!("resource {name}"), async {
                    factory.build(name, section).await.map_err(|e| {
                        BuildError::Resource(ResourceError::new(
                            name.clone(),
                            "cannot build or warm",
                            Some(e),
                        ))
                    })
                });
                let built = within(timeout, format!("resource {name}"), building).await??;
                tracing::info!(
                    resource = %name,
                    took_ms = started.elapsed().as_millis() as u64,
                    "Resource warm"
                );
                Ok::<_, BuildError>((name.clone(), built))
            }
        });
        Ok(try_join_all(builds).await?.into_iter().collect())
    }
}

/// A resource's section; an absent one is an empty table, so that a
/// resource whose config has defaults needs none.
fn section(sections: &BTreeMap<String, Value>, name: &str) -> Value {
    sections
        .get(name)
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()))
}
