import Foundation
import GRDB
import Logging
import Raster
import Synchronization
import TestSupport
import Testing

@testable import Coverage

/// A WGS84 GeoJSON polygon from `[lon, lat]` corners (closed here).
private func polygon(_ corners: [(Double, Double)]) throws -> JSONValue {
    let ring = (corners + [corners[0]]).map { JSONValue.array([.number($0.0), .number($0.1)]) }
    return .object(["type": .string("Polygon"), "coordinates": .array([.array(ring)])])
}

/// Runs `write`, which must be refused as `kind`, saying `saying`: acknowledged, or another
/// error, fails the test.
private func expectRefused(
    _ what: String, as kind: CoverageError.Kind = .unavailable, saying: String,
    _ write: () async throws -> Void
) async {
    do {
        try await write()
        Issue.record("\(what) was acknowledged")
    } catch let e as CoverageError {
        #expect(e.kind == kind && e.message.contains(saying), "\(what): \(e.message)")
    } catch {
        Issue.record("\(what): \(error) is not a CoverageError")
    }
}

/// A queued extract job of `request` (a JSON text).
private func job(_ id: String, request: String = "{}") -> ExtractJob {
    ExtractJob(id: id, client: "c", request: request, estimatedBytes: 1, at: "2026-12-07T00:00:00Z")
}

/// Set once, by another task.
private final class Ended: Sendable {
    private let flag = Mutex(false)
    func mark() { flag.withLock { $0 = true } }
    var isSet: Bool { flag.withLock { $0 } }
}

extension Result where Failure == any Error {
    /// The value or the error of `body`.
    fileprivate init(_ body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// Issue 11: lost updates, a database that cannot take writes, hashes as secrets, actor names,
/// perimeters out of Lambert-93's area, deliverables in unknown tilesets, empty PATCHes.
@Suite(.blocking) struct CoverageHardeningTests {
    /// 20 steps added at once, through two stores on one database (two processes): all stored,
    /// and the history chains each step count to the next.
    @Test(arguments: StoreKind.allCases)
    func concurrentStepsAreAllStoredWithAChainedHistory(store: StoreKind) async throws {
        let (service, database) = try await makeServiceAndDatabase(store)
        let other = CoverageService(
            store: try await database.open(), adminTokens: ["admin-secret"], footprints: FixedFootprints())
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<20 {
                let writer = i.isMultiple(of: 2) ? service : other
                group.addTask {
                    _ = try await writer.addStep(p.id, Etape(statut: .prodEnCours, dateDebut: "2025-01-01"), by: admin)
                }
            }
            try await group.waitForAll()
        }
        #expect(try await service.project(p.id).fields.etapes.count == 20)
        let counts = try await service.history(p.id).dropFirst().map { h -> [Int] in
            guard case .array(let from) = h.changes["etapes"]?["from"] ?? .array([]),
                case .array(let to) = h.changes["etapes"]?["to"] ?? .null
            else { return [] }
            return [from.count, to.count]
        }
        #expect(counts == (0..<20).map { [$0, $0 + 1] })
    }

    @Test(arguments: StoreKind.allCases)
    func aStoredHashIsNotASecret(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        let (p, key) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        for secret in ["admin-secret", key] {
            let hash = CoverageService.hashToken(secret)
            await #expect(throws: CoverageError.self) {
                _ = try await service.authenticate(authorization: "Token sha256:\(hash)")
            }
            #expect(!service.isAdmin(authorization: "Token sha256:\(hash)"))
        }
        #expect(try await service.authenticate(authorization: "Token admin-secret") == .admin("1"))
        #expect(try await service.authenticate(authorization: "Token \(key)") == .editor(p.id))
        #expect(service.isAdmin(authorization: "Token admin-secret"))
        // The configuration may hold the hash instead of the secret: the secret still works.
        let hashed = CoverageService(
            store: service.store, adminTokens: ["other", "sha256:\(CoverageService.hashToken("admin-secret"))"],
            footprints: FixedFootprints())
        #expect(try await hashed.authenticate(authorization: "Token admin-secret") == .admin("2"))
    }

    @Test(arguments: StoreKind.allCases)
    func historyNamesAdministratorsWithoutAnyPartOfTheirTokenHash(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        let who = try await service.authenticate(authorization: "Token admin-secret")
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: who)
        _ = try await service.addStep(p.id, Etape(statut: .investigation, dateDebut: "2025-01-01"), by: who)
        let history = try await service.history(p.id)
        #expect(history.map(\.actor) == ["admin:1", "admin:1"])
        let text = try JSONEncoder().encode(history)
        let hash = Array(CoverageService.hashToken("admin-secret"))
        for i in 0...(hash.count - 8) {
            #expect(!String(decoding: text, as: UTF8.self).contains(String(hash[i..<i + 8])))
        }
    }

    @Test(arguments: [
        ([(-180.0, -90.0), (180, -90), (180, 90), (-180, 90)], "outside Lambert-93's area of use"),
        ([(1e300, 1e300), (1e300 + 1e290, 1e300), (1e300, -1e300)], "outside Lambert-93's area of use"),
        ([(3.0, 50.0), (3.01, 50.0)], "geometrie"),
    ])
    func drawnPerimetersOutsideFranceAreRefusedWithAReason(corners: [(Double, Double)], reason: String)
        async throws
    {
        let (service, _) = try await makeService()
        var fields = ProjectFields(nom: "World")
        fields.geometrie = try polygon(corners)
        do {
            _ = try await service.create(fields, by: admin)
            Issue.record("accepted \(corners)")
        } catch let e as CoverageError {
            #expect(e.kind == .invalid)
            #expect(e.message.contains(reason), "\(e.message)")
        }
        #expect(try await service.projects().isEmpty)
    }

    @Test func aDisponibleProjectMustPublishInAKnownTileset() async throws {
        let (service, _) = try await makeService()
        let step = Etape(statut: .disponible, dateDebut: "2025-01-01")
        let nope = [Livrable(nom: "ortho", tileset: "nope")]
        await #expect(throws: CoverageError.self) {
            _ = try await service.create(
                ProjectFields(nom: "A", perimetres: ["commune:59350"], etapes: [step], livrables: nope), by: admin)
        }
        // Naming it before publication is allowed (planned); publishing is not.
        let (p, _) = try await service.create(
            ProjectFields(nom: "B", perimetres: ["commune:59350"], livrables: nope), by: admin)
        do {
            _ = try await service.addStep(p.id, step, by: admin)
            Issue.record("published in an unknown tileset")
        } catch let e as CoverageError {
            #expect(e.kind == .invalid && e.message.contains("'nope'"), "\(e.message)")
        }
        let (q, _) = try await service.create(
            ProjectFields(
                nom: "C", perimetres: ["commune:59350"], etapes: [step],
                livrables: [Livrable(nom: "ortho", tileset: "pcrs")]), by: admin)
        #expect(q.statut(on: "2025-06-01") == .disponible)
    }

    @Test(arguments: StoreKind.allCases)
    func aPatchOfUnknownFieldsIsRefusedAndANoOpWritesNoHistory(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        do {
            _ = try await service.patch(p.id, ["colour": .string("red"), "statut": .string("x")], by: admin)
            Issue.record("accepted unknown fields")
        } catch let e as CoverageError {
            #expect(e.kind == .malformed && e.message.contains("'colour', 'statut'"), "\(e.message)")
        }
        _ = try await service.patch(p.id, ["nom": .string("P")], by: admin)
        _ = try await service.update(p.id, try await service.project(p.id).fields, by: admin)
        #expect(try await service.history(p.id).map(\.action) == ["create"])
        _ = try await service.patch(p.id, ["nom": .string("Q")], by: admin)
        #expect(try await service.history(p.id).map(\.action) == ["create", "update"])
    }

    /// Deleted (with -wal and -shm) or replaced under the store: writes refused, reads go on.
    @Test(arguments: ["delete", "replace"])
    func writesToADatabaseFileNoLongerThereAreRefused(how: String) async throws {
        let (service, dir) = try await makeService()
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        let path = dir + "/db.sqlite"
        let fm = FileManager.default
        if how == "delete" {
            for suffix in ["", "-wal", "-shm"] { try? fm.removeItem(atPath: path + suffix) }
        } else {
            try fm.copyItem(atPath: path, toPath: path + ".new")
            _ = rename(path + ".new", path)
        }
        await expectRefused("a write to a \(how)d database", saying: how == "delete" ? "deleted" : "replaced") {
            _ = try await service.addStep(p.id, Etape(statut: .realise, dateDebut: "2025-01-01"), by: admin)
        }
        await #expect(throws: CoverageError.self) {
            _ = try await service.create(ProjectFields(nom: "Q", perimetres: ["commune:59350"]), by: admin)
        }
        #expect(try await service.project(p.id).fields.nom == "P")
    }

    /// Deleted under a store that has not read yet: a read needs a new connection, which SQLite
    /// cannot open on a missing file. Reads still answer what the file holds (through the
    /// connection the store writes with); writes are refused as `.unavailable`, saying why.
    @Test func readsOfADatabaseDeletedBeforeAnyReadGoOn() async throws {
        let dir = NSTemporaryDirectory() + "dallage-fresh-reader-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/db.sqlite"
        let store = try SQLiteCoverageStore(path: path)
        try await store.insertJob(job("j1"))
        let revision = try await SQLiteCoverageStore(path: path).revision()
        for suffix in ["", "-wal", "-shm"] { try FileManager.default.removeItem(atPath: path + suffix) }
        #expect(try await store.jobs(in: [.queued]).map(\.id) == ["j1"])
        #expect(try await store.revision() == revision)
        #expect(try await store.projects().isEmpty)
        #expect(try await store.territories(references: ["commune:59350"]).isEmpty)
        await expectRefused("a write to a deleted database", saying: "deleted") {
            try await store.insertJob(job("j2"))
        }
    }

    /// Another process holding the write lock longer than the store waits (a territory import, a
    /// second server): the write is refused as `.unavailable` (the API's 503 with `Retry-After`),
    /// not a bare "database is locked", and nothing of it is stored.
    @Test func aWriteThatWaitsTooLongForAnotherProcessIsUnavailable() async throws {
        let dir = NSTemporaryDirectory() + "dallage-busy-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/db.sqlite"
        let other = try SQLiteCoverageStore(path: path)
        let store = try SQLiteCoverageStore(path: path, busyTimeout: 0.2)
        let holding = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let holder = Task {
            try await other.write { db in
                try db.execute(sql: "UPDATE revision SET value = value WHERE id = 1")
                holding.signal()
                release.wait()
            }
        }
        await withCheckedContinuation { done in
            DispatchQueue.global().async {
                holding.wait()
                done.resume()
            }
        }
        await expectRefused("a write through another process's lock", saying: "busy") {
            try await store.insertJob(job("j1"))
        }
        release.signal()
        try await holder.value
        #expect(try await store.jobs(in: [.queued]).isEmpty)
        try await store.insertJob(job("j2"))
        #expect(try await store.jobs(in: [.queued]).map(\.id) == ["j2"])
    }

    /// The disk holding the database full: the write is refused as `.insufficientStorage` (the
    /// API's 507), saying so, and nothing of it is stored. SQLite's own ceiling on the file's
    /// pages stands in for the full disk: SQLite answers both with SQLITE_FULL.
    @Test func aWriteOnAFullDiskIsRefusedAsInsufficientStorage() async throws {
        let dir = NSTemporaryDirectory() + "dallage-full-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SQLiteCoverageStore(path: dir + "/db.sqlite")
        try await store.db.writeWithoutTransaction { db in
            let pages = try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0
            try db.execute(sql: "PRAGMA max_page_count = \(pages)")
        }
        await expectRefused("a write beyond a full disk", as: .insufficientStorage, saying: "full") {
            try await store.insertJob(job("big", request: String(repeating: "x", count: 1 << 20)))
        }
        #expect(try await store.jobs(in: [.queued]).isEmpty)
    }

    /// PostgreSQL: another session holding a project's row (a replica mid-write, a stuck client)
    /// longer than the store waits: the write is refused as `.unavailable` with nothing changed,
    /// and goes through once the row is free.
    @Test func aWriteWaitingOnAnotherSessionsRowIsUnavailable() async throws {
        let (service, database) = try await makeServiceAndDatabase(.postgres)
        guard case .postgres(let location) = database.location else { return }
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        let impatient = try await PostgresCoverageStore(
            location, logger: Logger(label: "test"), lockTimeout: .milliseconds(300))
        let other = CoverageService(store: impatient, adminTokens: ["admin-secret"], footprints: FixedFootprints())
        let holder = try await PostgresCoverageStore(location, logger: Logger(label: "test"))
        let (locked, holding) = AsyncStream.makeStream(of: Void.self)
        let (release, releasing) = AsyncStream.makeStream(of: Void.self)
        let held = Task {
            try await holder.client.withTransaction(logger: Logger(label: "test")) { connection in
                _ = try await connection.query(
                    "SELECT id FROM project WHERE id = \(p.id) FOR UPDATE", logger: Logger(label: "test"))
                holding.yield()
                for await _ in release { break }
            }
        }
        for await _ in locked { break }
        let ended = Ended()
        let attempt = Task {
            defer { ended.mark() }
            _ = try await other.addStep(p.id, Etape(statut: .realise, dateDebut: "2025-01-01"), by: admin)
        }
        // Waited for with a deadline: a store that waits forever fails here, and the row is
        // released either way (then such a store's write lands, and is reported below).
        let gaveUp = await Result {
            try await eventually("the write to give up", timeout: .seconds(30)) { ended.isSet }
        }
        releasing.yield()
        try await held.value
        if case .failure(let e) = gaveUp { Issue.record(e) }
        await expectRefused("a write through another session's row lock", saying: "busy") { try await attempt.value }
        #expect(try await service.project(p.id).fields.etapes.isEmpty)
        _ = try await other.addStep(p.id, Etape(statut: .realise, dateDebut: "2025-01-01"), by: admin)
        #expect(try await service.project(p.id).fields.etapes.count == 1)
        await holder.close()
        await impatient.close()
    }

    @Test func writesToAReadOnlyDatabaseAreRefusedAsUnavailable() async throws {
        let (service, dir) = try await makeService()
        let (p, _) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        let store = try SQLiteCoverageStore(path: dir + "/db.sqlite", readonly: true)
        #expect(store.isReadOnly)
        let readOnly = CoverageService(store: store, adminTokens: ["admin-secret"], footprints: FixedFootprints())
        await expectRefused("a write to a read-only database", saying: "read-only") {
            _ = try await readOnly.addStep(p.id, Etape(statut: .realise, dateDebut: "2025-01-01"), by: admin)
        }
        #expect(try await readOnly.project(p.id).fields.etapes.isEmpty)
    }
}
