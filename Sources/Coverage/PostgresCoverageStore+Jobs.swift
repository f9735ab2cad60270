import Foundation
import Logging
import PostgresNIO

extension PostgresCoverageStore {
    static let jobColumnNames = [
        "id", "client", "request", "state", "progress", "message", "bytes", "estimated_bytes", "created_at",
        "updated_at", "expires_at", "worker",
    ]
    static let jobColumns = jobColumnNames.joined(separator: ", ")
    /// The same, of the table named `j`.
    static let qualifiedJobColumns = jobColumnNames.map { "j.\($0)" }.joined(separator: ", ")

    static func job(_ row: PostgresRow) throws -> ExtractJob {
        let (id, client, request, state, progress, message, bytes, estimated, created, updated, expires, worker) =
            try row.decode(
                (
                    String, String, String, String, Double, String?, Int64?, Int64, String, String, String?, String?
                ).self)
        var j = ExtractJob(
            id: id, client: client, request: request, estimatedBytes: Int(estimated), at: created)
        j.state = ExtractJob.State(rawValue: state) ?? .failed
        j.progress = progress
        j.message = message
        j.bytes = bytes.map { Int($0) }
        j.updatedAt = updated
        j.expiresAt = expires
        j.worker = worker
        return j
    }

    public func insertJob(_ job: ExtractJob) async throws {
        _ = try await rows(Self.insertion(job))
    }

    static func insertion(_ job: ExtractJob) -> PostgresQuery {
        """
        INSERT INTO extract_job(id, client, request, state, progress, message, bytes, estimated_bytes,
          created_at, updated_at, expires_at, worker)
        VALUES (\(job.id), \(job.client), \(job.request), \(job.state.rawValue), \(job.progress), \(job.message),
          \(job.bytes.map { Int64($0) }), \(Int64(job.estimatedBytes)), \(job.createdAt), \(job.updatedAt),
          \(job.expiresAt), \(job.worker))
        """
    }

    /// The advisory lock space of per-client admissions (two-key locks never meet the schema's
    /// one-key lock).
    static let admissionLockSpace: Int32 = 0x6a6f_6273

    public func insertJob(_ job: ExtractJob, maxActive: Int, maxBytes: Int) async throws -> (
        active: Int, bytes: Int
    )? {
        let logger = logger
        return try await transaction { connection in
            // Two servers admitting jobs of one client take turns; other clients do not wait.
            try await connection.query(
                "SELECT pg_advisory_xact_lock(\(Self.admissionLockSpace), hashtext(\(job.client)))", logger: logger)
            let usage = try await Self.usage(client: job.client, on: connection, logger: logger)
            guard usage.active < maxActive, usage.bytes + job.estimatedBytes <= maxBytes else { return usage }
            try await connection.query(Self.insertion(job), logger: logger)
            return nil
        }
    }

    public func job(id: String) async throws -> ExtractJob? {
        try await rows("SELECT \(unescaped: Self.jobColumns) FROM extract_job WHERE id = \(id)").first.map(Self.job)
    }

    /// A job leaving `running` releases its lease (see the SQLite store).
    public func updateJob(_ job: ExtractJob) async throws {
        _ = try await rows(
            """
            UPDATE extract_job SET state = \(job.state.rawValue), progress = \(job.progress), message = \(job.message),
              bytes = \(job.bytes.map { Int64($0) }), updated_at = \(job.updatedAt), expires_at = \(job.expiresAt),
              lease_until = CASE WHEN \(job.state.rawValue) = 'running' THEN lease_until END
            WHERE id = \(job.id)
            """)
    }

    public func jobs(in states: [ExtractJob.State]) async throws -> [ExtractJob] {
        try await rows(
            """
            SELECT \(unescaped: Self.jobColumns) FROM extract_job WHERE state = ANY(\(states.map(\.rawValue)))
            ORDER BY created_at, id
            """
        ).map(Self.job)
    }

    public func usage(client: String) async throws -> (active: Int, bytes: Int) {
        try await mapped { try await Self.usage(client: client, on: self.client, logger: logger) }
    }

    static func usage(client: String, on runner: some PostgresQueryRunner, logger: Logger) async throws -> (
        active: Int, bytes: Int
    ) {
        let row = try await runner.run(
            """
            SELECT count(*) FILTER (WHERE state IN ('queued', 'running')),
              COALESCE(sum(CASE WHEN state = 'done' THEN bytes ELSE estimated_bytes END)
                FILTER (WHERE state IN ('queued', 'running', 'done')), 0)::bigint
            FROM extract_job WHERE client = \(client)
            """, logger: logger
        ).first
        guard let (active, bytes) = try row?.decode((Int64, Int64).self) else { return (0, 0) }
        return (Int(active), Int(bytes))
    }

    /// `FOR UPDATE SKIP LOCKED`: a claimer passes over the row another is claiming rather than
    /// waiting for it, so two servers polling at once take two different jobs. The lease is
    /// counted on the database's clock, the one clock every server shares.
    public func claimNextJob(worker: String, lease: Duration) async throws -> ExtractJob? {
        try await rows(
            """
            WITH next AS (
              SELECT id FROM extract_job
              WHERE state = 'queued'
                OR (state = 'running' AND (lease_until IS NULL OR lease_until < clock_timestamp()))
              ORDER BY created_at, id LIMIT 1
              FOR UPDATE SKIP LOCKED)
            UPDATE extract_job j SET state = 'running', worker = \(worker),
              lease_until = clock_timestamp() + make_interval(secs => \(lease.seconds)),
              progress = CASE WHEN j.state = 'running' THEN 0 ELSE j.progress END,
              message = CASE WHEN j.state = 'running' THEN \(takenOverMessage) ELSE j.message END,
              updated_at = \(CoverageService.timestamp())
            FROM next WHERE j.id = next.id
            RETURNING \(unescaped: Self.qualifiedJobColumns)
            """
        ).first.map(Self.job)
    }

    public func renewJobLease(id: String, worker: String, lease: Duration) async throws -> Bool {
        try await !rows(
            """
            UPDATE extract_job SET lease_until = clock_timestamp() + make_interval(secs => \(lease.seconds))
            WHERE id = \(id) AND worker = \(worker) AND state = 'running' RETURNING id
            """
        ).isEmpty
    }
}
