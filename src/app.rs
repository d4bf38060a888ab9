//! The application: `App::build(config)` binds and opens everything,
//! `run_until_stopped(shutdown)` serves until the future resolves, then shuts
//! down gracefully (in-flight requests finish, WebSockets get 1001, every
//! owned task ends, the database is closed).

use crate::accounts::Accounts;
use crate::config::Config;
use crate::delivery::DeliveryService;
use crate::fanout::Hub;
use crate::store::Store;
use axum::serve::ListenerExt as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of the running server.
pub struct AppState {
    pub config: Config,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub accounts: Accounts,
    pub delivery: DeliveryService,
    pub care: crate::care::CareService,
    pub hub: Arc<Hub>,
    /// Push to and from other server processes (NATS), if configured.
    pub cluster: Arc<crate::cluster::Cluster>,
    pub store: Store,
    /// Clinical ingestion (FHIR, MLLP) into the bots' own store.
    pub ingest: Arc<crate::ingest::Ingestor>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Every long-lived task (WebSocket connections) is tracked here.
    pub tasks: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("startup failed: {0}")]
    Startup(String),
}

pub struct App {
    listener: TcpListener,
    state: Arc<AppState>,
    local_addr: SocketAddr,
    writer: crate::store::writer::Writer,
    writer_task: tokio::task::JoinHandle<()>,
    mllp: Option<TcpListener>,
    mllp_addr: Option<SocketAddr>,
    bots_ready: tokio::sync::watch::Sender<usize>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AppError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let database = config.database().map_err(AppError::Startup)?;
        let store = Store::open(&database).await?;
        let hub = Arc::new(Hub::new(config.room_broadcast_capacity, 64));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let cluster = if config.nats_url.trim().is_empty() {
            crate::cluster::Cluster::single(metrics.clone())
        } else {
            if !database.is_postgres() {
                return Err(AppError::Startup(
                    "nats_url is for several servers sharing one PostgreSQL database; set database_url to postgres://… (or leave nats_url empty)".into(),
                ));
            }
            crate::cluster::Cluster::connect(
                config.nats_url.trim(),
                hub.clone(),
                metrics.clone(),
                &tasks,
                shutdown.clone(),
            )
            .await
            .map_err(AppError::Startup)?
        };
        let cluster = Arc::new(cluster);
        let (writer, writer_task) = crate::store::writer::spawn(
            &store,
            config.write_queue,
            config.write_batch_max,
            metrics.clone(),
        )?;
        let accounts = Accounts::new(store.clone(), writer.clone(), &config, metrics.clone())
            .await
            .map_err(|e| AppError::Startup(e.to_string()))?;
        let mailer = crate::mailer::Mailer::new(&config).map_err(AppError::Startup)?;
        let care = crate::care::CareService::new(store.clone(), writer.clone(), mailer, &config);
        let delivery_writer = writer.clone();
        let delivery = DeliveryService::new(
            store.clone(),
            hub.clone(),
            writer,
            config.room_cache_max,
            metrics.clone(),
            cluster.clone(),
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(AppError::Serve)?;
        let bots_store = crate::store::bots::BotStore::open(&config.bots_database_path())
            .await
            .map_err(|e| AppError::Startup(format!("cannot open the bots' database: {e}")))?;
        let keys = crate::ingest::parse_keys(&config.ingest_api_keys).map_err(AppError::Startup)?;
        if config.bots_enabled && config.totp_required_roles.contains(&tonari_wire::Role::Bot) {
            return Err(AppError::Startup(
                "totp_required_roles must not list bot: bots log in without a second factor"
                    .to_string(),
            ));
        }
        if config.bots_enabled {
            crate::bots::ensure_accounts(&store, &bots_store)
                .await
                .map_err(AppError::Startup)?;
        }
        let mut ingestor = crate::ingest::Ingestor::new(
            bots_store,
            keys,
            config.network_id_system.clone(),
            config.network_id_authority.clone(),
        );
        ingestor.metrics = Some(metrics.clone());
        let ingest = Arc::new(ingestor);
        let (mllp, mllp_addr) = if config.mllp_listen.trim().is_empty() {
            (None, None)
        } else {
            let addr: SocketAddr = config.mllp_listen.trim().parse().map_err(|_| {
                AppError::Startup("mllp_listen must be host:port (or empty)".to_string())
            })?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })?;
            let a = l.local_addr().map_err(AppError::Serve)?;
            (Some(l), Some(a))
        };
        let state = Arc::new(AppState {
            config,
            metrics,
            accounts,
            delivery,
            care,
            hub,
            cluster,
            store,
            ingest,
            shutdown,
            tasks,
        });
        Ok(App {
            listener,
            state,
            local_addr,
            writer: delivery_writer,
            writer_task,
            mllp,
            mllp_addr,
            bots_ready: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The MLLP listener's address, when `mllp_listen` is set.
    pub fn mllp_addr(&self) -> Option<SocketAddr> {
        self.mllp_addr
    }

    /// The shared state (store, ingestion), e.g. for `tonari demo`'s setup.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// How many in-process bots are logged in and listening (tests wait
    /// for this before they start).
    pub fn bots_ready(&self) -> tokio::sync::watch::Receiver<usize> {
        self.bots_ready.subscribe()
    }

    /// The URL the in-process bots use to reach this server.
    fn own_url(&self) -> String {
        let mut a = self.local_addr;
        if a.ip().is_unspecified() {
            a.set_ip(match a.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{a}")
    }

    /// Serve until `shutdown` resolves, then stop gracefully.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let state = self.state.clone();
        let token = state.shutdown.clone();
        tracing::info!(addr = %self.local_addr, "tonari listening");
        let own_url = self.own_url();
        if let Some(l) = self.mllp {
            tracing::info!(addr = ?self.mllp_addr, "MLLP listening");
            state.tasks.spawn(crate::ingest::mllp::serve(
                l,
                state.ingest.clone(),
                state.config.mllp_max_frame_bytes,
                token.clone(),
                state.tasks.clone(),
            ));
        }
        if state.config.bots_enabled {
            let notifier = match crate::mailer::Mailer::new(&state.config) {
                Ok(m) if !state.config.smtp_url.is_empty() => Some(crate::notify::spawn(
                    state.store.clone(),
                    Arc::new(m),
                    std::time::Duration::from_secs(state.config.notify_batch_secs),
                    token.clone(),
                    &state.tasks,
                )),
                _ => None,
            };
            let ctx = crate::bots::context(
                own_url,
                &state.config.data_dir,
                &state.ingest,
                notifier,
                self.bots_ready.clone(),
            );
            crate::bots::spawn(ctx, token.clone(), &state.tasks);
        }
        let router = crate::http::router(state.clone());
        // Small frames must not wait for Nagle's algorithm.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let result = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            token.cancel();
        })
        .await;
        state.shutdown.cancel();
        state.tasks.close();
        state.tasks.wait().await;
        // Every request is answered: let the writer finish its queue.
        self.writer.stop().await;
        if let Err(e) = self.writer_task.await {
            tracing::error!(error = %e, "writer task failed");
        }
        state.store.close().await;
        state.ingest.store.close().await;
        tracing::info!("tonari stopped");
        result.map_err(AppError::Serve)
    }
}
