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
    func updateProject(_ project: Project, history: HistoryEntry) async throws
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

/// The embedded store: SQLite through GRDB, in WAL mode so readers never wait for a writer.
public final class SQLiteCoverageStore: CoverageStore {
    let db: DatabasePool

    /// Opens (creating it when absent) the database at `path` and migrates it.
    public init(path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        var config = Configuration()
        config.busyMode = .timeout(10)
        db = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(db)
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
        try await db.write { db in
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
        try await db.read { db in
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
        try await db.read { db in
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
            return try await db.write { db in
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

    public func updateProject(_ project: Project, history: HistoryEntry) async throws {
        let fields = try project.fields.jsonText()
        do {
            try await db.write { db in
                try db.execute(
                    sql: """
                        UPDATE project SET nom = ?, fields = ?, perimeter_wkt = ?, area_m2 = ?, updated_at = ?
                        WHERE id = ? AND deleted_at IS NULL
                        """,
                    arguments: [
                        project.fields.nom, fields, project.perimeterWKT, project.areaM2, project.updatedAt, project.id,
                    ])
                guard db.changesCount == 1 else { throw CoverageError(.notFound, "no project \(project.id)") }
                try Self.record(history, project: project.id, in: db)
            }
        } catch let e as DatabaseError where e.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            throw CoverageError(.conflict, "a project named '\(project.fields.nom)' already exists")
        }
    }

    public func deleteProject(id: Int64, at: String, history: HistoryEntry) async throws {
        try await db.write { db in
            try db.execute(
                sql: "UPDATE project SET deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
                arguments: [at, at, id])
            guard db.changesCount == 1 else { throw CoverageError(.notFound, "no project \(id)") }
            try Self.record(history, project: id, in: db)
        }
    }

    public func project(id: Int64) async throws -> Project? {
        try await db.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM project WHERE id = ? AND deleted_at IS NULL", arguments: [id])
                .map(Self.project)
        }
    }

    public func projects() async throws -> [Project] {
        try await db.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM project WHERE deleted_at IS NULL ORDER BY id").map(Self.project)
        }
    }

    public func editorKeyHash(project id: Int64) async throws -> String? {
        try await db.read { db in
            try String.fetchOne(
                db, sql: "SELECT editor_key_hash FROM project WHERE id = ? AND deleted_at IS NULL", arguments: [id])
        }
    }

    public func project(editorKeyHash: String) async throws -> Int64? {
        try await db.read { db in
            try Int64.fetchOne(
                db, sql: "SELECT id FROM project WHERE editor_key_hash = ? AND deleted_at IS NULL",
                arguments: [editorKeyHash])
        }
    }

    public func setEditorKeyHash(project id: Int64, hash: String, history: HistoryEntry) async throws {
        try await db.write { db in
            try db.execute(
                sql: "UPDATE project SET editor_key_hash = ? WHERE id = ? AND deleted_at IS NULL",
                arguments: [hash, id])
            guard db.changesCount == 1 else { throw CoverageError(.notFound, "no project \(id)") }
            try Self.record(history, project: id, in: db)
        }
    }

    public func history(project id: Int64) async throws -> [HistoryEntry] {
        try await db.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM history WHERE project_id = ? ORDER BY id", arguments: [id]).map {
                HistoryEntry(
                    at: $0["at"], actor: $0["actor"], action: $0["action"],
                    changes: (try? JSONValue.parse($0["changes"])) ?? .null)
            }
        }
    }

    public func revision() async throws -> Int64 {
        try await db.read { db in try Int64.fetchOne(db, sql: "SELECT value FROM revision WHERE id = 1") ?? 0 }
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
