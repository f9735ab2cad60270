import Coverage
import Foundation
import Hummingbird
import Logging
import Pyramid
import S3
import ServiceLifecycle
import Serving

/// Builds the router with every surface: WMTS, XYZ/TileJSON, OGC API Tiles, operations.
public func buildRouter(
    configuration: ServerConfiguration, service: TileService, coverage: CoverageService? = nil,
    extracts: ExtractService? = nil, objects: S3Client? = nil
) -> Router<DallageRequestContext> {
    let registry = DallageMetrics.registry
    let configured = configuration.publicURL
    let baseURL: @Sendable (Request) -> String = { request in
        if let configured { return configured.hasSuffix("/") ? String(configured.dropLast()) : configured }
        let host = request.head.authority ?? "localhost"
        return "http://\(host)"
    }
    let router = Router(context: DallageRequestContext.self)
    router.add(middleware: LogRequestsMiddleware(.info))
    router.add(middleware: MetricsMiddleware())
    router.add(
        middleware: CORSMiddleware(
            allowOrigin: .all, allowHeaders: [.accept, .authorization, .contentType, .ifNoneMatch],
            allowMethods: [.get, .head, .post, .put, .patch, .delete, .options], exposedHeaders: ["ETag"]))
    router.add(middleware: HeadMiddleware())
    router.add(middleware: ErrorMiddleware())
    OperationsController(service: service, registry: registry).addRoutes(to: router)
    WMTSController(service: service, baseURL: baseURL).addRoutes(to: router)
    TilesController(service: service, baseURL: baseURL).addRoutes(to: router)
    OGCController(service: service, configuration: configuration, baseURL: baseURL).addRoutes(to: router)
    WMSController(service: service, configuration: configuration, baseURL: baseURL).addRoutes(to: router)
    WebController(service: service, configuration: configuration).addRoutes(to: router)
    router.readOnly(
        [
            "/tiles/:tileset/:tms/:z/:x/:file", "/tiles/:tileset/:tms/tilejson.json",
            "/ogc/collections/:c/map/tiles/:tms/:z/:row/:col",
        ])
    router.readOnly(
        ["/wmts", "/wmts/1.0.0/WMTSCapabilities.xml", "/wmts/1.0.0/:layer/:style/:tms/:z/:row/:file", "/wms"])
    if let coverage {
        CoverageController(coverage: coverage, gate: service.gate, catalog: service.catalog, logger: service.logger)
            .addRoutes(to: router)
    }
    if let extracts {
        ExtractsController(
            extracts: extracts, service: service, store: service.catalog.store, objects: objects,
            // The configuration file was checked when it was read; a bad list set in code trusts no one.
            trustedProxies: (try? AddressRanges(configuration.trustedProxies)) ?? .none
        ).addRoutes(to: router)
    }
    return router
}

/// The whole service on the configuration's SQLite database (a PostgreSQL URL is opened with
/// `DatabaseLocation.open` and passed to the other `buildApplication`).
public func buildApplication(
    configuration: ServerConfiguration, store: (any PyramidStore)? = nil,
    extractResults: (any ExtractResultStore)? = nil, objects: S3Client? = nil, logger: Logger
) throws -> some ApplicationProtocol {
    guard case .sqlite(let path) = try configuration.databaseLocation() else {
        throw CoverageError(
            .unavailable, "a PostgreSQL database is opened before building the application (DatabaseLocation.open)")
    }
    return try buildApplication(
        configuration: configuration, store: store, database: SQLiteCoverageStore(path: path),
        extractResults: extractResults, objects: objects, logger: logger)
}

/// The whole service: catalog (rescanned in the background), tile service and HTTP server.
/// Runs until SIGTERM or SIGINT, then finishes the requests in flight, and closes `database`.
/// `store` reads the pyramids (by default the folder `configuration.store` names; an `s3://`
/// store is opened with `OpenedStore.open` and passed here), `extractResults` keeps finished
/// extracts (by default the folder `extracts_dir` names; an `s3://` one is opened by
/// `OpenedStore.open` too), and `objects` reads source dalles named `s3://…` or `/vsis3/…` for
/// `/api/extracts/dalles` (none: such dalles cannot be read).
public func buildApplication(
    configuration: ServerConfiguration, store: (any PyramidStore)? = nil, database: any CoverageDatabase,
    extractResults: (any ExtractResultStore)? = nil, objects: S3Client? = nil, logger: Logger
) throws -> some ApplicationProtocol {
    _ = DallageMetrics.registry
    if extractResults == nil, case .s3? = try? StoreLocation(parsing: configuration.extractsPath) {
        throw StoreStartError(
            "extracts_dir '\(configuration.extractsPath)' is in a bucket: open it with OpenedStore.open and pass it as extractResults"
        )
    }
    let catalog = PyramidCatalog(
        store: store ?? FolderStore(configuration.store), openShards: configuration.openShards, logger: logger)
    // A folder's footprints are read as files (and kept while unchanged); another store's
    // through the catalog's sources.
    let footprints =
        catalog.store is FolderStore
        ? StoreFootprints(
            store: catalog.store.location, grid: configuration.renderGrid, tilesets: { Set(catalog.tilesets) })
        : StoreFootprints(catalog: catalog, grid: configuration.renderGrid)
    let coverage = CoverageService(store: database, adminTokens: configuration.adminTokens, footprints: footprints)
    let gate = PublicationGate(coverage: coverage, logger: logger)
    let service = TileService(catalog: catalog, settings: configuration.serving, gate: gate, logger: logger)
    let extracts = ExtractService(
        catalog: catalog, coverage: coverage, jobs: database, gate: gate, settings: configuration.extracts,
        results: extractResults, logger: logger)
    let serverName = "dallage"
    let loops = FastLaneLoops(
        hotTileBytes: configuration.hotTileCacheBytes, service: service, serverName: serverName)
    // A tile an object store answered later reached the client through the router: kept hot, the
    // next request for it is the fast lane's.
    service.onLaterRead { t, response in loops.remember(t, response) }
    let limits = ConnectionLimits(configuration)
    var app = Application(
        router: buildRouter(
            configuration: configuration, service: service, coverage: coverage, extracts: extracts, objects: objects),
        server: .http1(limits: limits) { loop in
            TileFastLane(
                service: service, loop: loops.state(on: loop), limits: limits, logger: logger)
        },
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: serverName),
        logger: logger)
    // First in, last out: the database closes after the services that use it have stopped.
    app.addServices(DatabaseCloser(database: database))
    app.addServices(
        CatalogWatcher(catalog: catalog, interval: configuration.rescanSeconds),
        PublicationWatcher(gate: gate, catalog: catalog, database: database), ExtractRunner(extracts: extracts))
    return app
}

/// Closes the coverage database (a PostgreSQL pool) once the server shuts down.
struct DatabaseCloser: Service {
    let database: any CoverageDatabase

    func run() async throws {
        try? await gracefulShutdown()
        await database.close()
    }
}

/// Rescans the store while the server runs.
struct CatalogWatcher: Service {
    let catalog: PyramidCatalog
    let interval: Double

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await catalog.watch(every: interval)
        }
    }
}

/// Reloads the published perimeters when the coverage database changes, whichever process wrote
/// (the CLI, another server): as soon as PostgreSQL notifies the commit, else within the second
/// (SQLite is polled); and every second anyway, for the day turning (a step starting today).
struct PublicationWatcher: Service {
    let gate: PublicationGate
    let catalog: PyramidCatalog
    let database: any CoverageDatabase

    func run() async throws {
        await cancelWhenGracefulShutdown {
            // One reloader fed by both sources, so two reloads never race each other.
            let (triggers, trigger) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in database.revisions(polling: .seconds(1)) { trigger.yield() }
                }
                group.addTask {
                    while !Task.isCancelled {
                        trigger.yield()
                        try? await Task.sleep(for: .seconds(1))
                    }
                }
                for await _ in triggers { await gate.refresh(tilesets: catalog.gatedTilesets) }
                group.cancelAll()
            }
        }
    }
}

/// Runs the extract queue inside the server's lifecycle.
struct ExtractRunner: Service {
    let extracts: ExtractService

    func run() async throws {
        await cancelWhenGracefulShutdown { await extracts.runJobs() }
    }
}
