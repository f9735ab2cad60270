import Foundation
import GRDB

/// Where projects, territories and their history are kept. Callers see only this protocol, so a
/// PostgreSQL store can be added without touching them. Each write and its history entry are
/// one transaction.
public protocol CoverageStore: Sendable {
    /// Inserts or updates territories by (level, code); answers how many were new.
    func upsertTerritories(_ territories: [Territory]) async throws -> (inserted: Int, updated: Int)
    /// Territories whose name or code contains `query` (case-insensitive), by name.
    func territories(level: Territory.Level?, query: String?, limit: Int) async throws -> [Territory]
    /// Territories by `level:code` reference; unknown references are absent from the answer.
    func territories(references: [String]) async throws -> [String: Territory]

    func insertProject(_ project: Project, editorKeyHash: String, history: HistoryEntry) async throws -> Project
    /// Reads a live project, lets `change` compute its next state and writes that state with its
    /// history entry, all in one transaction: concurrent writers never build on a stale read, and
    /// the history matches what is stored. `change` answers nil when nothing changes (nothing is
    /// written; the project is answered as it is).
    func modifyProject(id: Int64, _ change: @escaping ProjectChange) async throws -> Project
    func deleteProject(id: Int64, at: String, history: HistoryEntry) async throws
    /// A project that is not deleted.
    func project(id: Int64) async throws -> Project?
    /// Every project that is not deleted, by id.
    func projects() async throws -> [Project]
    func editorKeyHash(project id: Int64) async throws -> String?
    /// The live project whose editor key has this hash.
    func project(editorKeyHash: String) async throws -> Int64?
    func setEditorKeyHash(project id: Int64, hash: String, history: HistoryEntry) async throws
    func history(project id: Int64) async throws -> [HistoryEntry]
    /// A number that grows with every project change: readers poll it to know when to reload.
    func revision() async throws -> Int64
}

/// How a write changes a project inside the store's transaction: from the stored project and a
/// lookup of territories by `level:code` (read in the same transaction), the next project and its
/// history entry, or nil when nothing changes.
public typealias ProjectChange =
    @Sendable (_ current: Project, _ territories: ([String]) throws -> [String: Territory]) throws
    -> (Project, HistoryEntry)?

/// The embedded store: SQLite through GRDB, in WAL mode so readers never wait for a writer.
public final class SQLiteCoverageStore: CoverageDatabase {
    let db: DatabasePool
    /// Tells whether the file at the database's path is still the one opened.
    let fileGuard: DatabaseFileGuard
    /// True when the database could only be opened read-only: every write answers `.unavailable`.
    public let isReadOnly: Bool

    /// Opens (creating it when absent) the database at `path` and migrates it. A database that
    /// cannot be written (read-only file or mount) is opened read-only when it needs no migration:
    /// reads work, writes are refused as `.unavailable`. `readonly` opens it so on purpose.
    /// `busyTimeout` is how long a write waits for another process's write (a territory import,
    /// a second server) before it is refused as `.unavailable`.
    public init(path: String, readonly: Bool = false, busyTimeout: TimeInterval = 10) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !readonly, !dir.isEmpty {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        var config = Configuration()
        config.busyMode = .timeout(busyTimeout)
        if readonly {
            db = try Self.openReadOnly(path: path, config)
            isReadOnly = true
        } else {
            do {
                let pool = try DatabasePool(path: path, configuration: config)
                try Self.migrator.migrate(pool)
                db = pool
                isReadOnly = false
            } catch let e as DatabaseError where e.resultCode == .SQLITE_READONLY {
                db = try Self.openReadOnly(path: path, config)
                isReadOnly = true
            }
        }
        // Checked at every commit, extract jobs included: a write into a file that is no longer
        // the one at `path` would be acknowledged and lost at the next start.
        fileGuard = try DatabaseFileGuard(path: path)
        db.add(transactionObserver: fileGuard, extent: .databaseLifetime)
    }

    /// Nothing to release: the pool closes with the store.
    public func close() async {}

    private static func openReadOnly(path: String, _ base: Configuration) throws -> DatabasePool {
        var config = base
        config.readonly = true
        let pool = try DatabasePool(path: path, configuration: config)
        guard try pool.read({ try migrator.hasCompletedMigrations($0) }) else {
            throw CoverageError(.unavailable, "the coverage database is read-only and needs a migration")
        }
        return pool
    }

    /// Runs a write transaction; SQLite's "read-only database" becomes `.unavailable` with the
    /// reason, so the API answers 503 instead of a bare 500.
    func write<T: Sendable>(_ updates: @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await db.write(updates)
        } catch let e as DatabaseError where e.resultCode == .SQLITE_READONLY {
            throw CoverageError(
                .unavailable,
                "the coverage database is read-only: changes are refused until it is writable again (SQLite: \(e.message ?? "read-only"))"
            )
        } catch let e as DatabaseError where e.resultCode == .SQLITE_FULL {
            throw CoverageError(
                .insufficientStorage,
                "the disk holding the coverage database is full: nothing was changed; free some space and try again")
        } catch let e as DatabaseError where e.resultCode == .SQLITE_IOERR {
            throw CoverageError(
                .unavailable,
                "the coverage database cannot be written (SQLite: \(e.message ?? "I/O error")): nothing was changed")
        } catch let e as DatabaseError where e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED {
            throw CoverageError(
                .unavailable,
                "the coverage database is busy with another process's write (a territory import, another server): nothing was changed; try again"
            )
        }
    }

    /// Runs a read. The pool opens reader connections when it needs them, and SQLite cannot open
    /// one on a file deleted under the server (nor `-wal` and `-shm` with it): the read then goes
    /// through the writer's connection, which still holds the file, in a transaction rolled back
    /// (writes stay refused by the guard). Reads go on, as they do on connections already open.
    func read<T: Sendable>(_ value: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await db.read(value)
        } catch let e as DatabaseError where e.resultCode == .SQLITE_CANTOPEN {
            guard !fileGuard.isCurrent else {
                throw CoverageError(
                    .unavailable, "the coverage database cannot be opened (SQLite: \(e.message ?? "cannot open"))")
            }
            return try await db.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.deferred) {
                    result = try db.readOnly { try value(db) }
                    return .rollback
                }
                return result!
            }
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "territory") { t in
                t.column("level", .text).notNull()
                t.column("code", .text).notNull()
                t.column("name", .text).notNull()
                t.column("departement", .text)
                t.column("wkt_l93", .text).notNull()
                t.column("geojson_wgs84", .text).notNull()
                t.column("area_m2", .double).notNull()
                t.primaryKey(["level", "code"])
            }
            try db.create(table: "project") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("nom", .text).notNull()
                t.column("fields", .text).notNull()
                t.column("perimeter_wkt", .text).notNull()
                t.column("area_m2", .double).notNull()
                t.column("editor_key_hash", .text).notNull()
                t.column("created_at", .text).notNull()
                t.column("updated_at", .text).notNull()
                t.column("deleted_at", .text)
            }
            // Names are unique among live projects; a deleted project frees its name.
            try db.execute(sql: "CREATE UNIQUE INDEX project_nom ON project(nom) WHERE deleted_at IS NULL")
            try db.create(table: "history") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("project_id", .integer).notNull().indexed()
                t.column("at", .text).notNull()
                t.column("actor", .text).notNull()
                t.column("action", .text).notNull()
                t.column("changes", .text).notNull()
            }
            try db.create(table: "revision") { t in
                t.column("id", .integer).primaryKey()
                t.column("value", .integer).notNull()
            }
            try db.execute(sql: "INSERT INTO revision(id, value) VALUES (1, 0)")
        }
        migrateJobs(&m)
        return m
    }

    public func upsertTerritories(_ territories: [Territory]) async throws -> (inserted: Int, updated: Int) {
        try await write { db in
            var inserted = 0
            for t in territories {
                let exists =
                    try Bool.fetchOne(
                        db, sql: "SELECT 1 FROM territory WHERE level = ? AND code = ?",
                        arguments: [t.level.rawValue, t.code]) ?? false
                if !exists { inserted += 1 }
                try db.execute(
                    sql: """
                        INSERT INTO territory(level, code, name, departement, wkt_l93, geojson_wgs84, area_m2)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        ON CONFLICT(level, code) DO UPDATE SET name = excluded.name,
                          departement = excluded.departement, wkt_l93 = excluded.wkt_l93,
                          geojson_wgs84 = excluded.geojson_wgs84, area_m2 = excluded.area_m2
                        """,
                    arguments: [
                        t.level.rawValue, t.code, t.name, t.departement, t.wktL93, t.geoJSONWGS84, t.areaM2,
                    ])
            }
            // Perimeters built from territories change with them.
            try db.execute(sql: "UPDATE revision SET value = value + 1 WHERE id = 1")
            return (inserted, territories.count - inserted)
        }
    }

    public func territories(level: Territory.Level?, query: String?, limit: Int) async throws -> [Territory] {
        try await read { db in
            var sql = "SELECT * FROM territory WHERE 1"
            var args: [(any DatabaseValueConvertible)?] = []
            if let level {
                sql += " AND level = ?"
                args.append(level.rawValue)
            }
            if let query, !query.isEmpty {
                sql += " AND (name LIKE ? ESCAPE '\\' OR code LIKE ? ESCAPE '\\')"
                let escaped = query.replacingOccurrences(of: "\\", with: "\\\\")
                    .replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
                args.append("%\(escaped)%")
                args.append("\(escaped)%")
            }
            sql += " ORDER BY name, code LIMIT ?"
            args.append(limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Self.territory)
        }
    }

    public func territories(references: [String]) async throws -> [String: Territory] {
        try await read { db in try Self.territories(references: references, in: db) }
    }

    static func territories(references: [String], in db: Database) throws -> [String: Territory] {
        var out: [String: Territory] = [:]
        for ref in Set(references) {
            let parts = ref.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            if let row = try Row.fetchOne(
                db, sql: "SELECT * FROM territory WHERE level = ? AND code = ?", arguments: [parts[0], parts[1]])
            {
                out[ref] = Self.territory(row)
            }
        }
        return out
    }

    static func territory(_ row: Row) -> Territory {
        Territory(
            level: Territory.Level(rawValue: row["level"]) ?? .commune, code: row["code"], name: row["name"],
            departement: row["departement"], wktL93: row["wkt_l93"], geoJSONWGS84: row["geojson_wgs84"],
            areaM2: row["area_m2"])
    }

    public func insertProject(_ project: Project, editorKeyHash: String, history: HistoryEntry) async throws
        -> Project
    {
        let fields = try project.fields.jsonText()
        do {
            return try await write { db in
                try db.execute(
                    sql: """
                        INSERT INTO project(nom, fields, perimeter_wkt, area_m2, editor_key_hash, created_at, updated_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        project.fields.nom, fields, project.perimeterWKT, project.areaM2, editorKeyHash,
                        project.createdAt, project.updatedAt,
                    ])
                var p = project
                p.id = db.lastInsertedRowID
                try Self.record(history, project: p.id, in: db)
                return p
            }
        } catch let e as DatabaseError where e.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            throw CoverageError(.conflict, "a project named '\(project.fields.nom)' already exists")
        }
    }

    public func modifyProject(id: Int64, _ change: @escaping ProjectChange) async throws -> Project {
        try await write { db in
            guard
                let current = try Row.fetchOne(
                    db, sql: "SELECT * FROM project WHERE id = ? AND deleted_at IS NULL", arguments: [id]
                ).map(Self.project)
            else { throw CoverageError(.notFound, "no project \(id)") }
            let lookup = { (references: [String]) in try Self.territories(references: references, in: db) }
            guard let (project, history) = try change(current, lookup) else { return current }
            do {
                try db.execute(
                    sql: """
                        UPDATE project SET nom = ?, fields = ?, perimeter_wkt = ?, area_m2 = ?, updated_at = ?
                        WHERE id = ?
                        """,
                    arguments: [
                        project.fields.nom, try project.fields.jsonText(), project.perimeterWKT, project.areaM2,
                        project.updatedAt, id,
                    ])
            } catch let e as DatabaseError where e.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
                throw CoverageError(.conflict, "a project named '\(project.fields.nom)' already exists")
            }
            try Self.record(history, project: id, in: db)
            return project
        }
    }

    public func deleteProject(id: Int64, at: String, history: HistoryEntry) async throws {
        try await write { db in
            try db.execute(
                sql: "UPDATE project SET deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
                arguments: [at, at, id])
            guard db.changesCount == 1 else { throw CoverageError(.notFound, "no project \(id)") }
            try Self.record(history, project: id, in: db)
        }
    }

    public func project(id: Int64) async throws -> Project? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM project WHERE id = ? AND deleted_at IS NULL", arguments: [id])
                .map(Self.project)
        }
    }

    public func projects() async throws -> [Project] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM project WHERE deleted_at IS NULL ORDER BY id").map(Self.project)
        }
    }

    public func editorKeyHash(project id: Int64) async throws -> String? {
        try await read { db in
            try String.fetchOne(
                db, sql: "SELECT editor_key_hash FROM project WHERE id = ? AND deleted_at IS NULL", arguments: [id])
        }
    }

    public func project(editorKeyHash: String) async throws -> Int64? {
        try await read { db in
            try Int64.fetchOne(
                db, sql: "SELECT id FROM project WHERE editor_key_hash = ? AND deleted_at IS NULL",
                arguments: [editorKeyHash])
        }
    }

    public func setEditorKeyHash(project id: Int64, hash: String, history: HistoryEntry) async throws {
        try await write { db in
            try db.execute(
                sql: "UPDATE project SET editor_key_hash = ? WHERE id = ? AND deleted_at IS NULL",
                arguments: [hash, id])
            guard db.changesCount == 1 else { throw CoverageError(.notFound, "no project \(id)") }
            try Self.record(history, project: id, in: db)
        }
    }

    public func history(project id: Int64) async throws -> [HistoryEntry] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM history WHERE project_id = ? ORDER BY id", arguments: [id]).map {
                HistoryEntry(
                    at: $0["at"], actor: $0["actor"], action: $0["action"],
                    changes: (try? JSONValue.parse($0["changes"])) ?? .null)
            }
        }
    }

    public func revision() async throws -> Int64 {
        try await read { db in try Int64.fetchOne(db, sql: "SELECT value FROM revision WHERE id = 1") ?? 0 }
    }

    private static func record(_ h: HistoryEntry, project: Int64, in db: Database) throws {
        try db.execute(
            sql: "INSERT INTO history(project_id, at, actor, action, changes) VALUES (?, ?, ?, ?, ?)",
            arguments: [project, h.at, h.actor, h.action, h.changes.text])
        try db.execute(sql: "UPDATE revision SET value = value + 1 WHERE id = 1")
    }

    static func project(_ row: Row) -> Project {
        let text: String = row["fields"]
        let fields = (try? JSONDecoder().decode(ProjectFields.self, from: Data(text.utf8))) ?? ProjectFields(nom: "?")
        return Project(
            id: row["id"], fields: fields, perimeterWKT: row["perimeter_wkt"], areaM2: row["area_m2"],
            createdAt: row["created_at"], updatedAt: row["updated_at"], deletedAt: row["deleted_at"])
    }
}

/// Refuses every commit once the file at the database's path is no longer the one opened at
/// start (deleted, with or without its `-wal`, or replaced): SQLite would keep writing into the
/// unlinked file and the write would be acknowledged, then lost at the next start. Reads go on
/// from the open handle.
final class DatabaseFileGuard: TransactionObserver, Sendable {
    let path: String
    let device: UInt64
    let inode: UInt64

    init(path: String) throws {
        self.path = path
        guard let id = Self.identity(path) else {
            throw CoverageError(.unavailable, "the coverage database file is missing after opening it")
        }
        (device, inode) = id
    }

    static func identity(_ path: String) -> (UInt64, UInt64)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// Whether the file at `path` is still the one opened.
    var isCurrent: Bool { Self.identity(path).map { $0 == (device, inode) } ?? false }

    /// Why the file at `path` is no longer the database opened, with what that means, or nil.
    func problem(consequence: String) -> CoverageError? {
        guard let (d, i) = Self.identity(path) else {
            return CoverageError(
                .unavailable, "the coverage database file was deleted while the server runs: \(consequence)")
        }
        guard d == device, i == inode else {
            return CoverageError(
                .unavailable, "the coverage database file was replaced while the server runs: \(consequence)")
        }
        return nil
    }

    func databaseWillCommit() throws {
        if let problem = problem(
            consequence:
                "changes are refused (they would be lost, or go to the old file); restore it or restart the server")
        {
            throw problem
        }
    }

    func observes(eventsOfKind eventKind: DatabaseEventKind) -> Bool { false }
    func databaseDidChange(with event: DatabaseEvent) {}
    func databaseDidCommit(_ db: Database) {}
    func databaseDidRollback(_ db: Database) {}
}
