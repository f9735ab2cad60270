import Foundation
import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// The shared store: PostgreSQL through postgres-nio, for several servers on one database.
/// Geometries are kept as the SQLite store keeps them (WKT and GeoJSON text, no PostGIS): GDAL
/// does the geometry work in both. Every read-modify-write is one transaction; every write bumps
/// the revision and sends it on `dallage_coverage` (`NOTIFY`, delivered at commit), so other
/// servers reload at once (`revisions()`).
public final class PostgresCoverageStore: CoverageDatabase {
    /// The server and database (its description carries no password).
    public let location: PostgresLocation
    /// The pool every query leases a connection from.
    let client: PostgresClient
    /// Runs the pool (`client.run()`) until `close()`.
    private let pool: Task<Void, Never>
    let logger: Logger
    /// Set by `close()`, with the listeners it stops.
    private let lifecycle = Mutex<(closed: Bool, listeners: [Task<Void, Never>])>((false, []))

    /// The channel every write notifies with the new revision.
    public static let channel = "dallage_coverage"

    /// Connects once (a bad password or an unreachable server fails here, quickly and clearly),
    /// migrates the schema, then starts the pool of at most `maximumConnections`.
    /// `lockTimeout` is how long a write waits for a row another writer holds (a replica, a
    /// stuck session) before it is refused as `.unavailable`, with nothing changed.
    public init(
        _ location: PostgresLocation, logger: Logger, maximumConnections: Int = 10,
        lockTimeout: Duration = .seconds(10)
    ) async throws {
        self.location = location
        self.logger = logger
        let first = try await Self.connect(location, logger: logger)
        do {
            try await PostgresMigrations.migrate(first, logger: logger)
        } catch {
            try? await first.close()
            throw Self.failure(error, location)
        }
        try? await first.close()
        var configuration = try Self.clientConfiguration(location)
        configuration.options.maximumConnections = max(1, maximumConnections)
        let (seconds, attoseconds) = lockTimeout.components
        let milliseconds = max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        configuration.options.additionalStartupParameters = [("lock_timeout", "\(milliseconds)ms")]
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.client = client
        // Returns once the pool's task is entering run(): a query before that would only wait,
        // but postgres-nio warns about it.
        let (started, signal) = AsyncStream.makeStream(of: Void.self)
        pool = Task {
            signal.finish()
            await client.run()
        }
        for await _ in started {}
    }

    deinit { pool.cancel() }

    /// Stops the listeners and closes the pool's connections; queries afterwards fail as
    /// `.unavailable`.
    public func close() async {
        let listeners = lifecycle.withLock { state in
            state.closed = true
            defer { state.listeners = [] }
            return state.listeners
        }
        for task in listeners { task.cancel() }
        for task in listeners { await task.value }
        pool.cancel()
        await pool.value
    }

    var isClosed: Bool { lifecycle.withLock { $0.closed } }

    /// Keeps a listener's task for `close()` to stop (at once when already closed).
    func listening(_ task: Task<Void, Never>) {
        let closed = lifecycle.withLock { state in
            if !state.closed { state.listeners.append(task) }
            return state.closed
        }
        if closed { task.cancel() }
    }

    // MARK: Connections

    /// One connection outside the pool: for the migration at open and for `LISTEN`.
    static func connect(_ location: PostgresLocation, logger: Logger) async throws -> PostgresConnection {
        do {
            var configuration = PostgresConnection.Configuration(
                host: location.host, port: location.port, username: location.user, password: location.password,
                database: location.database, tls: try connectionTLS(location))
            configuration.options.connectTimeout = .seconds(10)
            return try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        } catch {
            throw failure(error, location)
        }
    }

    static func tlsConfiguration(_ location: PostgresLocation) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        switch location.sslMode {
        // libpq encrypts without checking the certificate in these modes.
        case .disable, .allow, .prefer, .require: tls.certificateVerification = .none
        case .verifyCA: tls.certificateVerification = .noHostnameVerification
        case .verifyFull: tls.certificateVerification = .fullVerification
        }
        if let root = location.sslRootCertificate { tls.trustRoots = .file(root) }
        return tls
    }

    static func connectionTLS(_ location: PostgresLocation) throws -> PostgresConnection.Configuration.TLS {
        switch location.sslMode {
        case .disable: return .disable
        case .allow, .prefer: return .prefer(try NIOSSLContext(configuration: tlsConfiguration(location)))
        case .require, .verifyCA, .verifyFull:
            return .require(try NIOSSLContext(configuration: tlsConfiguration(location)))
        }
    }

    static func clientConfiguration(_ location: PostgresLocation) throws -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS =
            switch location.sslMode {
            case .disable: .disable
            case .allow, .prefer: .prefer(tlsConfiguration(location))
            case .require, .verifyCA, .verifyFull: .require(tlsConfiguration(location))
            }
        return PostgresClient.Configuration(
            host: location.host, port: location.port, username: location.user, password: location.password,
            database: location.database, tls: tls)
    }

    /// What went wrong, for the operator (at open, and in the log): the server named without
    /// its password, and the server's own message when it sent one. postgres-nio's errors describe themselves
    /// generically on purpose; the parts read here hold no credentials.
    static func failure(_ error: any Error, _ location: PostgresLocation) -> CoverageError {
        if let e = error as? CoverageError { return e }
        let reason: String
        if let e = error as? PSQLError {
            switch e.code {
            case .server:
                let message = e.serverInfo?[.message] ?? "error"
                let state = e.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
                reason = message + state
            case .connectionError:
                reason = "cannot connect: \(e.underlying.map { "\($0)" } ?? "no answer")"
            case .sslUnsupported: reason = "the server does not offer TLS (sslmode=\(location.sslMode.rawValue))"
            case .authMechanismRequiresPassword: reason = "the server asks for a password and the URL has none"
            case .serverClosedConnection, .clientClosedConnection: reason = "the connection was closed"
            case .poolClosed: reason = "the store is closed"
            default: reason = "\(e.code)"
            }
        } else if let e = error as? PostgresDecodingError {
            reason = "a column could not be read (\(e.code) of \(e.columnName))"
        } else {
            reason = "\(error)"
        }
        return CoverageError(.unavailable, "the coverage database \(location) cannot answer: \(reason)")
    }

    /// Runs `body` and turns a database failure into `.unavailable` (typed errors pass through).
    /// The details (server, user, the server's message) go to the log, not to the API's client.
    func mapped<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let e as CoverageError {
            throw e
        } catch let e as PSQLError where e.serverInfo?[.sqlState] == "55P03" {
            // lock_not_available: another writer held the row past `lock_timeout`.
            logger.warning("coverage write waited out another writer's lock: \(Self.failure(e, location).message)")
            throw CoverageError(
                .unavailable,
                "the coverage database is busy with another writer: nothing was changed; try again")
        } catch {
            logger.error("coverage database failure: \(Self.failure(error, location).message)")
            throw CoverageError(.unavailable, "the coverage database cannot answer now; try again later")
        }
    }

    /// Collects every row of a query on the pool.
    func rows(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try await mapped { try await client.query(query, logger: logger).collect() }
    }

    /// One transaction on one pooled connection: committed when `body` returns, rolled back when
    /// it throws (its error is rethrown as it is, so a `CoverageError` keeps its kind).
    func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let logger = logger
        return try await mapped {
            try await client.withConnection { connection in
                try await connection.query("BEGIN", logger: logger)
                do {
                    let value = try await body(connection)
                    try await connection.query("COMMIT", logger: logger)
                    return value
                } catch {
                    _ = try? await connection.query("ROLLBACK", logger: logger)
                    throw error
                }
            }
        }
    }

    /// Bumps the revision and notifies it, in the writing transaction: listeners hear of it at
    /// commit, never before the change is visible.
    func bumpRevision(_ connection: PostgresConnection) async throws {
        try await connection.query(
            """
            WITH bumped AS (UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value)
            SELECT pg_notify(\(Self.channel), value::text) FROM bumped
            """, logger: logger)
    }

    static func isUniqueViolation(_ error: any Error) -> Bool {
        (error as? PSQLError)?.serverInfo?[.sqlState] == "23505"
    }

    // MARK: Territories

    static let territoryColumns = "level, code, name, departement, wkt_l93, geojson_wgs84, area_m2"

    static func territory(_ row: PostgresRow) throws -> Territory {
        let (level, code, name, departement, wkt, geojson, area) = try row.decode(
            (String, String, String, String?, String, String, Double).self)
        return Territory(
            level: Territory.Level(rawValue: level) ?? .commune, code: code, name: name, departement: departement,
            wktL93: wkt, geoJSONWGS84: geojson, areaM2: area)
    }

    public func upsertTerritories(_ territories: [Territory]) async throws -> (inserted: Int, updated: Int) {
        try await transaction { connection in
            var inserted = 0
            for t in territories {
                // `xmax = 0` on the returned row: it was inserted, not updated.
                let rows = try await connection.query(
                    """
                    INSERT INTO territory(level, code, name, departement, wkt_l93, geojson_wgs84, area_m2)
                    VALUES (\(t.level.rawValue), \(t.code), \(t.name), \(t.departement), \(t.wktL93),
                      \(t.geoJSONWGS84), \(t.areaM2))
                    ON CONFLICT (level, code) DO UPDATE SET name = excluded.name,
                      departement = excluded.departement, wkt_l93 = excluded.wkt_l93,
                      geojson_wgs84 = excluded.geojson_wgs84, area_m2 = excluded.area_m2
                    RETURNING (xmax = 0)
                    """, logger: logger
                ).collect()
                if try rows.first?.decode(Bool.self) == true { inserted += 1 }
            }
            // Perimeters built from territories change with them.
            try await bumpRevision(connection)
            return (inserted, territories.count - inserted)
        }
    }

    public func territories(level: Territory.Level?, query: String?, limit: Int) async throws -> [Territory] {
        var sql = "SELECT \(Self.territoryColumns) FROM territory WHERE true"
        var binds = PostgresBindings()
        if let level {
            binds.append(level.rawValue)
            sql += " AND level = $\(binds.count)"
        }
        if let query, !query.isEmpty {
            let escaped = query.replacingOccurrences(of: "\\", with: "\\\\")
                .replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
            binds.append("%\(escaped)%")
            sql += " AND (name ILIKE $\(binds.count) ESCAPE '\\'"
            binds.append("\(escaped)%")
            sql += " OR code ILIKE $\(binds.count) ESCAPE '\\')"
        }
        binds.append(limit)
        // Byte order, as SQLite sorts: the answer does not depend on the server's locale.
        sql += " ORDER BY name COLLATE \"C\", code COLLATE \"C\" LIMIT $\(binds.count)"
        return try await rows(PostgresQuery(unsafeSQL: sql, binds: binds)).map(Self.territory)
    }

    public func territories(references: [String]) async throws -> [String: Territory] {
        try await mapped { try await Self.territories(references: references, on: client, logger: logger) }
    }

    /// Territories by `level:code` reference, read through `runner` (the pool, or a connection in
    /// a transaction); references without a colon and unknown ones are absent.
    static func territories(references: [String], on runner: some PostgresQueryRunner, logger: Logger)
        async throws -> [String: Territory]
    {
        var levels: [String] = []
        var codes: [String] = []
        for ref in Set(references) {
            let parts = ref.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            levels.append(parts[0])
            codes.append(parts[1])
        }
        guard !levels.isEmpty else { return [:] }
        let rows = try await runner.run(
            """
            SELECT \(unescaped: territoryColumns) FROM territory
            WHERE (level, code) IN (SELECT * FROM unnest(\(levels)::text[], \(codes)::text[]))
            """, logger: logger)
        var out: [String: Territory] = [:]
        for row in rows {
            let t = try territory(row)
            out[t.reference] = t
        }
        return out
    }

    // MARK: Projects

    static let projectColumns = "id, fields, perimeter_wkt, area_m2, created_at, updated_at, deleted_at"

    static func project(_ row: PostgresRow) throws -> Project {
        let (id, text, wkt, area, created, updated, deleted) = try row.decode(
            (Int64, String, String, Double, String, String, String?).self)
        let fields = (try? JSONDecoder().decode(ProjectFields.self, from: Data(text.utf8))) ?? ProjectFields(nom: "?")
        return Project(
            id: id, fields: fields, perimeterWKT: wkt, areaM2: area, createdAt: created, updatedAt: updated,
            deletedAt: deleted)
    }

    public func insertProject(_ project: Project, editorKeyHash: String, history: HistoryEntry) async throws
        -> Project
    {
        let fields = try project.fields.jsonText()
        let logger = logger
        return try await transaction { connection in
            let rows = try await Self.refusingDuplicateName(project.fields.nom) {
                try await connection.query(
                    """
                    INSERT INTO project(nom, fields, perimeter_wkt, area_m2, editor_key_hash, created_at, updated_at)
                    VALUES (\(project.fields.nom), \(fields), \(project.perimeterWKT), \(project.areaM2),
                      \(editorKeyHash), \(project.createdAt), \(project.updatedAt))
                    RETURNING id
                    """, logger: logger
                ).collect()
            }
            var p = project
            p.id = try rows.first?.decode(Int64.self) ?? 0
            try await record(history, project: p.id, on: connection)
            return p
        }
    }

    /// Runs a write of a project's name; the unique index on live names answers `.conflict`.
    static func refusingDuplicateName<T>(_ nom: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch  where isUniqueViolation(error) {
            throw CoverageError(.conflict, "a project named '\(nom)' already exists")
        }
    }

    public func modifyProject(id: Int64, _ change: @escaping ProjectChange) async throws -> Project {
        let logger = logger
        return try await transaction { connection in
            // The row lock holds every other writer of this project until the commit.
            guard
                let current = try await connection.query(
                    """
                    SELECT \(unescaped: Self.projectColumns) FROM project
                    WHERE id = \(id) AND deleted_at IS NULL FOR UPDATE
                    """, logger: logger
                ).collect().first.map(Self.project)
            else { throw CoverageError(.notFound, "no project \(id)") }
            // `change` looks territories up synchronously: it runs against what was read so
            // far, and again after reading what it asked for and was missing.
            let known = TerritoryLookup(
                try await Self.territories(references: current.fields.perimetres, on: connection, logger: logger))
            var outcome: (Project, HistoryEntry)?
            while true {
                known.missing = []
                var failure: (any Error)?
                do { outcome = try change(current, known.lookup) } catch { failure = error }
                if known.missing.isEmpty {
                    if let failure { throw failure }
                    break
                }
                known.add(
                    try await Self.territories(references: Array(known.missing), on: connection, logger: logger),
                    asked: known.missing)
            }
            guard let (project, history) = outcome else { return current }
            let fields = try project.fields.jsonText()
            try await Self.refusingDuplicateName(project.fields.nom) {
                try await connection.query(
                    """
                    UPDATE project SET nom = \(project.fields.nom), fields = \(fields),
                      perimeter_wkt = \(project.perimeterWKT), area_m2 = \(project.areaM2),
                      updated_at = \(project.updatedAt)
                    WHERE id = \(id)
                    """, logger: logger)
            }
            try await record(history, project: id, on: connection)
            return project
        }
    }

    public func deleteProject(id: Int64, at: String, history: HistoryEntry) async throws {
        let logger = logger
        try await transaction { connection in
            let rows = try await connection.query(
                """
                UPDATE project SET deleted_at = \(at), updated_at = \(at) WHERE id = \(id) AND deleted_at IS NULL
                RETURNING id
                """, logger: logger
            ).collect()
            guard rows.count == 1 else { throw CoverageError(.notFound, "no project \(id)") }
            try await record(history, project: id, on: connection)
        }
    }

    public func project(id: Int64) async throws -> Project? {
        try await rows(
            "SELECT \(unescaped: Self.projectColumns) FROM project WHERE id = \(id) AND deleted_at IS NULL"
        ).first.map(Self.project)
    }

    public func projects() async throws -> [Project] {
        try await rows("SELECT \(unescaped: Self.projectColumns) FROM project WHERE deleted_at IS NULL ORDER BY id")
            .map(Self.project)
    }

    public func editorKeyHash(project id: Int64) async throws -> String? {
        try await rows("SELECT editor_key_hash FROM project WHERE id = \(id) AND deleted_at IS NULL")
            .first?.decode(String.self)
    }

    public func project(editorKeyHash: String) async throws -> Int64? {
        try await rows("SELECT id FROM project WHERE editor_key_hash = \(editorKeyHash) AND deleted_at IS NULL")
            .first?.decode(Int64.self)
    }

    public func setEditorKeyHash(project id: Int64, hash: String, history: HistoryEntry) async throws {
        let logger = logger
        try await transaction { connection in
            let rows = try await connection.query(
                "UPDATE project SET editor_key_hash = \(hash) WHERE id = \(id) AND deleted_at IS NULL RETURNING id",
                logger: logger
            ).collect()
            guard rows.count == 1 else { throw CoverageError(.notFound, "no project \(id)") }
            try await record(history, project: id, on: connection)
        }
    }

    public func history(project id: Int64) async throws -> [HistoryEntry] {
        try await rows("SELECT at, actor, action, changes FROM history WHERE project_id = \(id) ORDER BY id").map {
            let (at, actor, action, changes) = try $0.decode((String, String, String, String).self)
            return HistoryEntry(
                at: at, actor: actor, action: action, changes: (try? JSONValue.parse(changes)) ?? .null)
        }
    }

    public func revision() async throws -> Int64 {
        try await rows("SELECT value FROM revision WHERE id = 1").first?.decode(Int64.self) ?? 0
    }

    private func record(_ h: HistoryEntry, project: Int64, on connection: PostgresConnection) async throws {
        try await connection.query(
            """
            INSERT INTO history(project_id, at, actor, action, changes)
            VALUES (\(project), \(h.at), \(h.actor), \(h.action), \(h.changes.text))
            """, logger: logger)
        try await bumpRevision(connection)
    }
}

/// Territories read so far in a `modifyProject` transaction, and those a change asked for that
/// were not read yet. Lives inside one transaction's task.
private final class TerritoryLookup {
    var known: [String: Territory]
    /// References already read from the database (found or not).
    var asked: Set<String>
    var missing: Set<String> = []

    init(_ found: [String: Territory]) {
        known = found
        asked = Set(found.keys)
    }

    func add(_ found: [String: Territory], asked references: Set<String>) {
        known.merge(found) { _, new in new }
        asked.formUnion(references)
    }

    /// The synchronous lookup `ProjectChange` receives.
    func lookup(_ references: [String]) -> [String: Territory] {
        var out: [String: Territory] = [:]
        for ref in references {
            if let t = known[ref] {
                out[ref] = t
            } else if !asked.contains(ref) {
                missing.insert(ref)
            }
        }
        return out
    }
}

/// Where a query runs: the pool or one connection (inside a transaction).
protocol PostgresQueryRunner {
    func run(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow]
}

extension PostgresClient: PostgresQueryRunner {
    func run(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await self.query(query, logger: logger).collect()
    }
}

extension PostgresConnection: PostgresQueryRunner {
    func run(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await self.query(query, logger: logger).collect()
    }
}
