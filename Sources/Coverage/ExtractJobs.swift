import Foundation
import GRDB

/// A queued extract, kept in the database so none is lost when the server restarts.
public struct ExtractJob: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        case queued, running, done, failed, cancelled, expired
    }

    public var id: String
    /// Who asked (a token's hash or an address): bounds are per client.
    public var client: String
    /// The request as it was posted (JSON).
    public var request: String
    public var state: State
    public var progress: Double
    public var message: String?
    public var bytes: Int?
    public var estimatedBytes: Int
    public var createdAt: String
    public var updatedAt: String
    public var expiresAt: String?

    public init(id: String, client: String, request: String, estimatedBytes: Int, at: String) {
        self.id = id
        self.client = client
        self.request = request
        state = .queued
        progress = 0
        self.estimatedBytes = estimatedBytes
        createdAt = at
        updatedAt = at
    }
}

/// Where extract jobs are kept (the same database as the coverage).
public protocol ExtractJobStore: Sendable {
    func insertJob(_ job: ExtractJob) async throws
    func job(id: String) async throws -> ExtractJob?
    func updateJob(_ job: ExtractJob) async throws
    /// Jobs in any of `states`, oldest first.
    func jobs(in states: [ExtractJob.State]) async throws -> [ExtractJob]
    /// A client's queued and running jobs, and the bytes of its finished results still kept.
    func usage(client: String) async throws -> (active: Int, bytes: Int)
}

extension SQLiteCoverageStore: ExtractJobStore {
    static func migrateJobs(_ m: inout DatabaseMigrator) {
        m.registerMigration("v2-extract-jobs") { db in
            try db.create(table: "extract_job") { t in
                t.column("id", .text).primaryKey()
                t.column("client", .text).notNull().indexed()
                t.column("request", .text).notNull()
                t.column("state", .text).notNull().indexed()
                t.column("progress", .double).notNull()
                t.column("message", .text)
                t.column("bytes", .integer)
                t.column("estimated_bytes", .integer).notNull()
                t.column("created_at", .text).notNull()
                t.column("updated_at", .text).notNull()
                t.column("expires_at", .text)
            }
        }
    }

    public func insertJob(_ job: ExtractJob) async throws {
        try await db.write { db in
            try db.execute(
                sql: """
                    INSERT INTO extract_job(id, client, request, state, progress, message, bytes, estimated_bytes,
                      created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    job.id, job.client, job.request, job.state.rawValue, job.progress, job.message, job.bytes,
                    job.estimatedBytes, job.createdAt, job.updatedAt, job.expiresAt,
                ])
        }
    }

    public func job(id: String) async throws -> ExtractJob? {
        try await db.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM extract_job WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    public func updateJob(_ job: ExtractJob) async throws {
        try await db.write { db in
            try db.execute(
                sql: """
                    UPDATE extract_job SET state = ?, progress = ?, message = ?, bytes = ?, updated_at = ?,
                      expires_at = ? WHERE id = ?
                    """,
                arguments: [
                    job.state.rawValue, job.progress, job.message, job.bytes, job.updatedAt, job.expiresAt, job.id,
                ])
        }
    }

    public func jobs(in states: [ExtractJob.State]) async throws -> [ExtractJob] {
        try await db.read { db in
            let marks = states.map { _ in "?" }.joined(separator: ",")
            return try Row.fetchAll(
                db, sql: "SELECT * FROM extract_job WHERE state IN (\(marks)) ORDER BY created_at, id",
                arguments: StatementArguments(states.map(\.rawValue))
            ).map(Self.job)
        }
    }

    public func usage(client: String) async throws -> (active: Int, bytes: Int) {
        try await db.read { db in
            let active =
                try Int.fetchOne(
                    db, sql: "SELECT COUNT(*) FROM extract_job WHERE client = ? AND state IN ('queued', 'running')",
                    arguments: [client]) ?? 0
            let bytes =
                try Int.fetchOne(
                    db,
                    sql: """
                        SELECT COALESCE(SUM(CASE WHEN state = 'done' THEN bytes ELSE estimated_bytes END), 0)
                        FROM extract_job WHERE client = ? AND state IN ('queued', 'running', 'done')
                        """,
                    arguments: [client]) ?? 0
            return (active, bytes)
        }
    }

    static func job(_ row: Row) -> ExtractJob {
        var j = ExtractJob(
            id: row["id"], client: row["client"], request: row["request"], estimatedBytes: row["estimated_bytes"],
            at: row["created_at"])
        j.state = ExtractJob.State(rawValue: row["state"]) ?? .failed
        j.progress = row["progress"]
        j.message = row["message"]
        j.bytes = row["bytes"]
        j.updatedAt = row["updated_at"]
        j.expiresAt = row["expires_at"]
        return j
    }
}
