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
    /// The server running it (set when claimed; kept afterwards for the record).
    public var worker: String?

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
    /// Inserts `job` unless its client already has `maxActive` jobs queued or running, or its
    /// kept bytes plus this job's estimate would pass `maxBytes`. Checked and inserted in one
    /// transaction, one client at a time: bounds hold across servers sharing the database.
    /// Answers the client's usage when it refused, nil when the job was inserted.
    func insertJob(_ job: ExtractJob, maxActive: Int, maxBytes: Int) async throws -> (active: Int, bytes: Int)?
    /// Takes the oldest job waiting to run — queued, or running under a lease that expired (its
    /// server stopped renewing it: killed, cut off) — and marks it running by `worker` until
    /// `lease` from now. Two workers never take the same job; nil when none waits.
    func claimNextJob(worker: String, lease: Duration) async throws -> ExtractJob?
    /// Extends `worker`'s lease on a running job; false when the job is no longer that worker's
    /// to run (cancelled, finished, or taken over after the lease expired).
    func renewJobLease(id: String, worker: String, lease: Duration) async throws -> Bool
}

/// What a job taken over from a worker whose lease expired says.
let takenOverMessage = "taken over: the server running it stopped renewing its lease"

extension Duration {
    /// The duration in seconds, fractions included.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

extension SQLiteCoverageStore {
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
        m.registerMigration("v3-job-leases") { db in
            try db.alter(table: "extract_job") { t in
                t.add(column: "worker", .text)
                // Seconds since 1970 (this machine's clock: one SQLite file has one writer host).
                t.add(column: "lease_until", .double)
            }
        }
    }

    public func insertJob(_ job: ExtractJob) async throws {
        try await write { db in try Self.insert(job, in: db) }
    }

    static func insert(_ job: ExtractJob, in db: Database) throws {
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

    public func insertJob(_ job: ExtractJob, maxActive: Int, maxBytes: Int) async throws -> (
        active: Int, bytes: Int
    )? {
        // One write transaction: no other writer between the count and the insert.
        try await write { db in
            let usage = try Self.usage(client: job.client, in: db)
            guard usage.active < maxActive, usage.bytes + job.estimatedBytes <= maxBytes else { return usage }
            try Self.insert(job, in: db)
            return nil
        }
    }

    public func job(id: String) async throws -> ExtractJob? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM extract_job WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    /// A job leaving `running` releases its lease: queued again (a server stopping), it is
    /// claimable at once, whatever lease its last runner held.
    public func updateJob(_ job: ExtractJob) async throws {
        try await write { db in
            try db.execute(
                sql: """
                    UPDATE extract_job SET state = ?, progress = ?, message = ?, bytes = ?, updated_at = ?,
                      expires_at = ?, lease_until = CASE WHEN ? = 'running' THEN lease_until END WHERE id = ?
                    """,
                arguments: [
                    job.state.rawValue, job.progress, job.message, job.bytes, job.updatedAt, job.expiresAt,
                    job.state.rawValue, job.id,
                ])
        }
    }

    public func jobs(in states: [ExtractJob.State]) async throws -> [ExtractJob] {
        try await read { db in
            let marks = states.map { _ in "?" }.joined(separator: ",")
            return try Row.fetchAll(
                db, sql: "SELECT * FROM extract_job WHERE state IN (\(marks)) ORDER BY created_at, id",
                arguments: StatementArguments(states.map(\.rawValue))
            ).map(Self.job)
        }
    }

    public func usage(client: String) async throws -> (active: Int, bytes: Int) {
        try await read { db in try Self.usage(client: client, in: db) }
    }

    static func usage(client: String, in db: Database) throws -> (active: Int, bytes: Int) {
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

    public func claimNextJob(worker: String, lease: Duration) async throws -> ExtractJob? {
        let now = Date().timeIntervalSince1970
        let at = CoverageService.timestamp()
        let waiting = """
            SELECT * FROM extract_job
            WHERE state = 'queued' OR (state = 'running' AND (lease_until IS NULL OR lease_until < ?))
            ORDER BY created_at, id LIMIT 1
            """
        // Looked at first with a read: runners poll twice a second, and an idle queue must not
        // cost a write transaction each time (nor fail on a read-only database).
        guard try await read({ db in try Row.fetchOne(db, sql: waiting, arguments: [now]) != nil }) else {
            return nil
        }
        // One write transaction: SQLite has one writer at a time, so the read and the claim are
        // never interleaved with another claimer's.
        return try await write { db in
            guard var job = try Row.fetchOne(db, sql: waiting, arguments: [now]).map(Self.job) else { return nil }
            if job.state == .running {
                job.progress = 0
                job.message = takenOverMessage
            }
            job.state = .running
            job.worker = worker
            job.updatedAt = at
            try db.execute(
                sql: """
                    UPDATE extract_job SET state = 'running', worker = ?, lease_until = ?, progress = ?, message = ?,
                      updated_at = ? WHERE id = ?
                    """,
                arguments: [worker, now + lease.seconds, job.progress, job.message, at, job.id])
            return job
        }
    }

    public func renewJobLease(id: String, worker: String, lease: Duration) async throws -> Bool {
        let until = Date().timeIntervalSince1970 + lease.seconds
        return try await write { db in
            try db.execute(
                sql: "UPDATE extract_job SET lease_until = ? WHERE id = ? AND worker = ? AND state = 'running'",
                arguments: [until, id, worker])
            return db.changesCount == 1
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
        j.worker = row["worker"]
        return j
    }
}
