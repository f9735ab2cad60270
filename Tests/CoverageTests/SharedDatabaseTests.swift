import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

@testable import Coverage

private func job(_ n: Int, client: String = "c1", estimated: Int = 100) -> ExtractJob {
    // Creation times in order: the queue is oldest first.
    ExtractJob(
        id: String(format: "job-%02d", n), client: client, request: #"{"tileset":"pcrs"}"#, estimatedBytes: estimated,
        at: String(format: "2025-06-01T10:00:%02dZ", n))
}

/// The extract queue, shared by several servers: the same tests on SQLite and PostgreSQL.
@Suite(.blocking) struct ExtractJobStoreTests {
    @Test(arguments: StoreKind.allCases)
    func jobsAreKeptAndCountedPerClient(store kind: StoreKind) async throws {
        let store = try await TestDatabase.make(kind).open()
        try await store.insertJob(job(1, estimated: 1000))
        try await store.insertJob(job(2, estimated: 500))
        try await store.insertJob(job(3, client: "c2"))
        var done = try #require(try await store.job(id: "job-01"))
        done.state = .done
        done.bytes = 700
        done.progress = 1
        done.expiresAt = "2025-06-02T10:00:00Z"
        done.message = "the geometry was invalid and has been repaired"
        try await store.updateJob(done)
        #expect(try await store.job(id: "job-01") == done)
        #expect(try await store.job(id: "nope") == nil)
        // One active job (job-02, its estimate) and one kept result (job-01, its real size).
        #expect(try await store.usage(client: "c1") == (1, 1200))
        #expect(try await store.usage(client: "nobody") == (0, 0))
        #expect(try await store.jobs(in: [.queued]).map(\.id) == ["job-02", "job-03"])
        #expect(try await store.jobs(in: [.done, .queued]).map(\.id) == ["job-01", "job-02", "job-03"])
    }

    /// Two servers polling at once for ten jobs: each job is claimed exactly once.
    @Test(arguments: StoreKind.allCases)
    func twoClaimersNeverTakeTheSameJob(store kind: StoreKind) async throws {
        let database = try await TestDatabase.make(kind)
        let first = try await database.open()
        let second = try await database.open()
        for n in 0..<10 { try await first.insertJob(job(n)) }
        let claims = try await withThrowingTaskGroup(of: [String].self) { group in
            for (name, store) in [("a", first), ("b", second)] {
                group.addTask {
                    var mine: [String] = []
                    while let j = try await store.claimNextJob(worker: name, lease: .seconds(60)) {
                        #expect(j.state == .running && j.worker == name)
                        mine.append(j.id)
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(claims.sorted() == (0..<10).map { String(format: "job-%02d", $0) })
        #expect(try await first.jobs(in: [.queued]).isEmpty)
        #expect(try await first.jobs(in: [.running]).count == 10)
    }

    /// A server stops renewing (killed): once its lease runs out another server takes the job,
    /// from the start, and the first one learns it is no longer its job.
    @Test(arguments: StoreKind.allCases)
    func aJobWhoseLeaseExpiredIsTakenOver(store kind: StoreKind) async throws {
        let database = try await TestDatabase.make(kind)
        let first = try await database.open()
        let second = try await database.open()
        try await first.insertJob(job(1))
        let claimed = try #require(try await first.claimNextJob(worker: "a", lease: .seconds(60)))
        var progressed = claimed
        progressed.progress = 0.5
        try await first.updateJob(progressed)
        // a's while its lease runs.
        #expect(try await first.renewJobLease(id: claimed.id, worker: "a", lease: .seconds(60)))
        #expect(try await second.claimNextJob(worker: "b", lease: .seconds(60)) == nil)
        // a's last renewal, before it dies: the lease runs out a millisecond later.
        #expect(try await first.renewJobLease(id: claimed.id, worker: "a", lease: .milliseconds(1)))
        var takenOver: ExtractJob?
        try await eventually("b to take the job over after a's lease") {
            takenOver = try await second.claimNextJob(worker: "b", lease: .seconds(60))
            return takenOver != nil
        }
        #expect(takenOver?.id == claimed.id && takenOver?.worker == "b")
        #expect(takenOver?.progress == 0 && takenOver?.message == takenOverMessage)
        #expect(try await first.renewJobLease(id: claimed.id, worker: "a", lease: .seconds(60)) == false)
        #expect(try await second.renewJobLease(id: claimed.id, worker: "b", lease: .seconds(60)))
        // A cancelled job is nobody's any more.
        var cancelled = try #require(takenOver)
        cancelled.state = .cancelled
        try await second.updateJob(cancelled)
        #expect(try await second.renewJobLease(id: claimed.id, worker: "b", lease: .seconds(60)) == false)
        #expect(try await first.claimNextJob(worker: "a", lease: .seconds(60)) == nil)
    }

    /// A job queued again (its server stopping) is claimable at once, and stays so when marked
    /// running by hand: leaving `running` released the lease its server held.
    @Test(arguments: StoreKind.allCases)
    func aJobQueuedAgainReleasesItsLease(store kind: StoreKind) async throws {
        let database = try await TestDatabase.make(kind)
        let first = try await database.open()
        let second = try await database.open()
        try await first.insertJob(job(1))
        var claimed = try #require(try await first.claimNextJob(worker: "a", lease: .seconds(60)))
        claimed.state = .queued
        try await first.updateJob(claimed)
        claimed.state = .running
        try await first.updateJob(claimed)
        #expect(try await second.claimNextJob(worker: "b", lease: .seconds(60))?.worker == "b")
        #expect(try await first.renewJobLease(id: claimed.id, worker: "a", lease: .seconds(60)) == false)
    }

    /// A job left `running` with no lease (by a server from before leases) is taken at once.
    @Test(arguments: StoreKind.allCases)
    func aRunningJobWithoutALeaseIsTakenAtOnce(store kind: StoreKind) async throws {
        let store = try await TestDatabase.make(kind).open()
        var j = job(1)
        j.state = .running
        try await store.insertJob(j)
        #expect(try await store.claimNextJob(worker: "a", lease: .seconds(60))?.id == "job-01")
    }
}

/// What crosses processes: revisions heard by other servers, schema steps applied once.
@Suite(.blocking) struct SharedDatabaseTests {
    /// A change written through one store reaches a server listening through another (NOTIFY on
    /// PostgreSQL, polling on SQLite), asked with a deadline.
    @Test(arguments: StoreKind.allCases)
    func aChangeThroughOneStoreReachesAnotherStoresListener(store kind: StoreKind) async throws {
        let (service, database) = try await makeServiceAndDatabase(kind)
        let listener = try await database.open()
        let heard = Mutex<[Int64]>([])
        let listening = Task {
            for await r in listener.revisions(polling: .milliseconds(50)) { heard.withLock { $0.append(r) } }
        }
        defer { listening.cancel() }
        try await eventually("the listener to start") { !heard.withLock { $0.isEmpty } }
        let start = try await listener.revision()
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        let created = try await service.store.revision()
        #expect(created > start)
        try await eventually("the listener to hear the creation") { heard.withLock { $0.last ?? 0 } >= created }
        _ = try await service.addStep(p.id, Etape(statut: .realise, dateDebut: "2025-01-01"), by: admin)
        let stepped = try await service.store.revision()
        try await eventually("the listener to hear the step") { heard.withLock { $0.last ?? 0 } >= stepped }
        await listener.close()
    }

    /// Two servers starting at once on a new database: both open it, each step applied once.
    @Test func twoStoresMigratingAtOnceBothOpen() async throws {
        let database = try await TestDatabase.make(.postgres)
        let stores = try await withThrowingTaskGroup(of: (any CoverageDatabase).self) { group in
            for _ in 0..<3 { group.addTask { try await database.open() } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(stores.count == 3)
        for store in stores { #expect(try await store.revision() == 0) }
        guard case .postgres(let location) = database.location else { return }
        let store = try await PostgresCoverageStore(location, logger: Logger(label: "test"))
        let versions = try await store.rows("SELECT version FROM dallage_schema ORDER BY version").map {
            try $0.decode(Int.self)
        }
        #expect(versions == PostgresMigrations.steps.map(\.version))
        for s in stores { await s.close() }
        await store.close()
    }

    /// A wrong password: refused with the server's reason, and the password nowhere in the error.
    @Test func aWrongPasswordIsAClearErrorWithoutThePassword() async throws {
        let database = try await TestDatabase.make(.postgres)
        guard case .postgres(var location) = database.location else { return }
        location.password = "wrong-Pa55word-\(UUID().uuidString)"
        let password = try #require(location.password)
        do {
            _ = try await DatabaseLocation.postgres(location).open(logger: Logger(label: "test"))
            Issue.record("connected with a wrong password")
        } catch let e as CoverageError {
            #expect(e.kind == .unavailable)
            #expect(e.message.contains("password authentication failed"), "\(e.message)")
            #expect(e.message.contains("127.0.0.1:\(location.port)"), "\(e.message)")
            #expect(!e.message.contains(password) && !"\(e)".contains(password))
            #expect(!String(reflecting: e).contains(password))
        }
    }

    /// A store whose database stopped answering (closed here): `.unavailable` with a reason fit
    /// for an API client, naming neither the server nor its user.
    @Test func aFailureAfterOpeningIsUnavailableWithoutTheServersName() async throws {
        let database = try await TestDatabase.make(.postgres)
        let store = try await database.open()
        await store.close()
        do {
            _ = try await store.projects()
            Issue.record("a closed store answered")
        } catch let e as CoverageError {
            #expect(e.kind == .unavailable && e.message.contains("cannot answer now"), "\(e.message)")
            #expect(!e.message.contains("127.0.0.1") && !e.message.contains(PostgresTestCluster.user))
        }
    }

    /// No server there: a clear error naming where, not the password.
    @Test func anUnreachableServerIsAClearErrorWithoutThePassword() async throws {
        let text = "postgres://dallage:S3cret-\(UUID().uuidString)@127.0.0.1:1/coverage?sslmode=disable"
        let location = try DatabaseLocation(parsing: text)
        guard case .postgres(let pg) = location, let password = pg.password else {
            Issue.record("not read as PostgreSQL")
            return
        }
        do {
            _ = try await location.open(logger: Logger(label: "test"))
            Issue.record("connected to port 1")
        } catch let e as CoverageError {
            #expect(e.kind == .unavailable)
            #expect(e.message.contains("postgres://dallage@127.0.0.1:1/coverage"), "\(e.message)")
            #expect(!e.message.contains(password) && !String(reflecting: e).contains(password))
        }
    }
}

/// `DALLAGE_DB` / `database:`: a SQLite path or a libpq-style PostgreSQL URL.
@Suite struct DatabaseLocationTests {
    @Test(arguments: [
        ("store/dallage.sqlite", DatabaseLocation.sqlite(path: "store/dallage.sqlite")),
        ("/var/lib/dallage/db.sqlite", .sqlite(path: "/var/lib/dallage/db.sqlite")),
        (
            "postgres://dallage:s3cret@db.example.org:6543/coverage?sslmode=require",
            .postgres(
                PostgresLocation(
                    host: "db.example.org", port: 6543, user: "dallage", password: "s3cret", database: "coverage",
                    sslMode: .require))
        ),
        (
            "postgresql://u@localhost/d",
            .postgres(PostgresLocation(host: "localhost", user: "u", password: nil, database: "d", sslMode: .prefer))
        ),
        (
            // Percent-encoded: a password with '@', ':' and '/' in it.
            "postgres://dallage:p%40ss%3Aw%2Frd@[::1]:5433/cov%20db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            .postgres(
                PostgresLocation(
                    host: "::1", port: 5433, user: "dallage", password: "p@ss:w/rd", database: "cov db",
                    sslMode: .verifyFull, sslRootCertificate: "/etc/ca.pem"))
        ),
    ])
    func locationsAreRead(text: String, expected: DatabaseLocation) throws {
        #expect(try DatabaseLocation(parsing: text) == expected)
    }

    @Test(arguments: [
        ("mysql://u:p@h/d", "neither a SQLite file path nor a postgres://"),
        ("sqlite:///tmp/x.sqlite", "plain path"),
        ("postgres://h/d", "names no user"),
        ("postgres://u:pw@/d", "names no host"),
        ("postgres://u:pw@h/d?sslmode=always", "sslmode 'always' is not one of"),
        ("postgres://u:pw@h/d?options=x", "parameter 'options' is not supported"),
        ("postgres://u:pw@h/d/e", "one database name"),
        ("", "empty"),
    ])
    func badLocationsAreExplained(text: String, reason: String) {
        do {
            _ = try DatabaseLocation(parsing: text)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.kind == .malformed)
            #expect(error.message.contains(reason), "\(error.message)")
            #expect(!error.message.contains("pw"), "\(error.message)")
        }
    }

    @Test func thePasswordIsInNoDescription() throws {
        let location = try DatabaseLocation(parsing: "postgres://dallage:Hunter2@h:5432/cov?sslmode=disable")
        #expect(location.description == "postgres://dallage@h:5432/cov?sslmode=disable")
        guard case .postgres(let pg) = location else { return }
        var dumped = ""
        dump(pg, to: &dumped)
        for text in ["\(location)", String(reflecting: location), "\(pg)", String(reflecting: pg), dumped] {
            #expect(!text.contains("Hunter2"), "\(text)")
        }
    }
}

extension ExtractJobStoreTests {
    /// One client posting from two servers at once: the per-client bounds hold across them.
    @Test(arguments: StoreKind.allCases)
    func perClientBoundsHoldAcrossStores(store kind: StoreKind) async throws {
        let database = try await TestDatabase.make(kind)
        let first = try await database.open()
        let second = try await database.open()
        let admitted = try await withThrowingTaskGroup(of: Bool.self) { group in
            for n in 0..<10 {
                let store = n.isMultiple(of: 2) ? first : second
                group.addTask { try await store.insertJob(job(n), maxActive: 2, maxBytes: 1 << 30) == nil }
            }
            return try await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
        }
        #expect(admitted == 2)
        #expect(try await first.usage(client: "c1") == (2, 200))
        // The bytes bound: 200 kept, 900 more would pass 1000; another client is not held back.
        let refused = try #require(try await first.insertJob(job(20, estimated: 900), maxActive: 5, maxBytes: 1000))
        #expect(refused == (2, 200))
        #expect(try await second.insertJob(job(21, client: "c2", estimated: 900), maxActive: 5, maxBytes: 1000) == nil)
    }
}
