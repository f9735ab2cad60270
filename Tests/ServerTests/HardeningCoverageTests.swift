import Coverage
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Pyramid
import Server
import Synchronization
import Testing

@testable import Serving

/// Issue 11, the coverage API over HTTP: concurrent writes, a database that cannot take writes,
/// stored hashes as secrets, actor names, bad perimeters, unknown tilesets and empty PATCHes.
@Suite struct HardeningCoverageTests {
    static let admin: HTTPFields = [.authorization: "Token s3cret", .contentType: "application/json"]
    /// A small square near Lille (WGS84), inside the fixture's data.
    static let square =
        #"{"type":"Polygon","coordinates":[[[3.0,50.6],[3.01,50.6],[3.01,50.61],[3.0,50.61],[3.0,50.6]]]}"#

    /// An empty store (no tileset) in a fresh folder, removed by the caller.
    static func emptyStore() throws -> String {
        let dir = NSTemporaryDirectory() + "dallage-hardening-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/store", withIntermediateDirectories: true)
        return dir
    }

    static func object(_ body: ByteBuffer) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]) ?? [:]
    }

    static func list(_ body: ByteBuffer) -> [[String: Any]] {
        (try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [[String: Any]]) ?? []
    }

    /// Creates a project; answers its id and editor key.
    static func create(
        _ client: some TestClientProtocol, name: String = "P", extra: String = ""
    ) async throws -> (Int, String) {
        let body = #"{"nom":"\#(name)","geometrie":\#(square)\#(extra)}"#
        return try await client.execute(
            uri: "/api/projects", method: .post, headers: admin, body: ByteBuffer(string: body)
        ) { r in
            #expect(r.status == .created, "\(String(buffer: r.body))")
            let o = object(r.body)
            return (o["id"] as? Int ?? 0, o["editor_key"] as? String ?? "")
        }
    }

    static func history(_ client: some TestClientProtocol, _ id: Int) async throws -> [[String: Any]] {
        try await client.execute(uri: "/api/projects/\(id)/history", method: .get) { list($0.body) }
    }

    /// 20 parallel steps, then 20 parallel renamings: every write answered 200 is stored, and the
    /// history chains each change's "from" to the previous one's "to".
    @Test func parallelWritesToOneProjectAreAllStoredWithAChainedHistory() async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ServerFixture.app(store: dir + "/store") { $0.adminTokens = ["s3cret"] }.test(.router) { client in
            let (id, _) = try await Self.create(client)
            let stepStatuses = try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        try await client.executeRequest(
                            uri: "/api/projects/\(id)/etapes", method: .post, headers: Self.admin,
                            body: ByteBuffer(string: #"{"statut":"prod_en_cours","date_debut":"2025-01-01"}"#)
                        ).status
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(stepStatuses == Array(repeating: .ok, count: 20))
            try await client.execute(uri: "/api/projects/\(id)", method: .get) { r in
                #expect((Self.object(r.body)["etapes"] as? [Any])?.count == 20)
            }
            let steps = try await Self.history(client, id).filter { $0["action"] as? String == "status" }
            let counts = steps.map { h -> [Int] in
                let change = (h["changes"] as? [String: Any])?["etapes"] as? [String: Any]
                return [(change?["from"] as? [Any])?.count ?? -1, (change?["to"] as? [Any])?.count ?? -1]
            }
            #expect(counts == (0..<20).map { [$0, $0 + 1] })

            let renameStatuses = try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for i in 0..<20 {
                    group.addTask {
                        try await client.executeRequest(
                            uri: "/api/projects/\(id)", method: .patch, headers: Self.admin,
                            body: ByteBuffer(string: #"{"nom":"P-\#(i)"}"#)
                        ).status
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(renameStatuses == Array(repeating: .ok, count: 20))
            let names = try await Self.history(client, id).filter { $0["action"] as? String == "update" }.map {
                h -> (String, String) in
                let change = (h["changes"] as? [String: Any])?["nom"] as? [String: Any]
                return (change?["from"] as? String ?? "?", change?["to"] as? String ?? "?")
            }
            #expect(names.count == 20)
            #expect(names.first?.0 == "P")
            for (previous, next) in zip(names, names.dropFirst()) { #expect(next.0 == previous.1) }
            try await client.execute(uri: "/api/projects/\(id)", method: .get) { r in
                #expect(Self.object(r.body)["nom"] as? String == names.last?.1)
            }
        }
    }

    /// The database file deleted (with -wal and -shm) or replaced while the server runs: writes
    /// answer 503 with the reason (no server path), reads go on, and after a restart the store
    /// holds exactly what was acknowledged.
    @Test(arguments: ["deleted", "replaced"])
    func writesToADatabaseFileNoLongerThereAnswer503(how: String) async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let database = dir + "/coverage.sqlite"
        let app = try ServerFixture.app(store: dir + "/store") {
            $0.adminTokens = ["s3cret"]
            $0.database = database
        }
        let projectID = try await app.test(.router) { client in
            let (id, _) = try await Self.create(client)
            let fm = FileManager.default
            if how == "deleted" {
                for suffix in ["", "-wal", "-shm"] { try? fm.removeItem(atPath: database + suffix) }
            } else {
                // A copy taken while the server runs (its -wal checkpointed into it), moved over.
                try fm.copyItem(atPath: database, toPath: database + ".copy")
                try fm.copyItem(atPath: database + "-wal", toPath: database + ".copy-wal")
                #expect(rename(database + ".copy", database) == 0)
                #expect(rename(database + ".copy-wal", database + "-wal") == 0)
            }
            try await client.execute(
                uri: "/api/projects/\(id)/etapes", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"statut":"realise","date_debut":"2025-01-01"}"#)
            ) { r in
                #expect(r.status == .serviceUnavailable)
                let o = Self.object(r.body)
                #expect(o["error"] as? String == "Unavailable")
                #expect((o["detail"] as? String)?.contains(how) == true, "\(o)")
                #expect(!String(buffer: r.body).contains(dir))
            }
            try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"nom":"Q","geometrie":\#(Self.square)}"#)
            ) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/api/projects/\(id)", method: .get) { #expect($0.status == .ok) }
            return id
        }
        // Restarted: nothing refused shows up.
        let service = CoverageService(
            store: try SQLiteCoverageStore(path: database), adminTokens: [],
            footprints: StoreFootprints(store: dir + "/store"))
        let stored = try await service.projects()
        if how == "replaced" {
            #expect(stored.map(\.id) == [Int64(projectID)])
            #expect(stored.first?.fields.etapes.isEmpty == true)
        } else {
            #expect(stored.isEmpty)
        }
    }

    /// A read-only database (opened read-only here: tests run as root, whom file modes do not
    /// stop; a read-only file or mount gives SQLite the same SQLITE_READONLY): writes answer 503
    /// with the reason, logged; reads go on.
    @Test func writesToAReadOnlyDatabaseAnswer503WithTheReasonLogged() async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let database = dir + "/coverage.sqlite"
        let writable = CoverageService(
            store: try SQLiteCoverageStore(path: database), adminTokens: ["s3cret"],
            footprints: StoreFootprints(store: dir + "/store"))
        var fields = ProjectFields(nom: "P")
        fields.geometrie = try JSONValue.parse(Self.square)
        let (p, _) = try await writable.create(fields, by: .admin("1"))

        let logged = CollectedLogs()
        var logger = Logger(label: "test") { _ in logged }
        logger.logLevel = .info
        var configuration = ServerConfiguration()
        configuration.store = dir + "/store"
        configuration.tmsDirectory = ServerFixture.root + "/config/tms"
        let coverage = CoverageService(
            store: try SQLiteCoverageStore(path: database, readonly: true), adminTokens: ["s3cret"],
            footprints: StoreFootprints(store: configuration.store))
        let gate = PublicationGate(coverage: coverage, logger: logger)
        let service = TileService(
            catalog: PyramidCatalog(store: FolderStore(configuration.store), logger: logger),
            settings: configuration.serving, gate: gate, logger: logger)
        let app = Application(
            router: buildRouter(configuration: configuration, service: service, coverage: coverage), logger: logger)
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/api/projects/\(p.id)/etapes", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"statut":"realise","date_debut":"2025-01-01"}"#)
            ) { r in
                #expect(r.status == .serviceUnavailable)
                #expect((Self.object(r.body)["detail"] as? String)?.contains("read-only") == true)
            }
            try await client.execute(uri: "/api/projects/\(p.id)", method: .get) { #expect($0.status == .ok) }
        }
        #expect(logged.messages.contains { $0.contains("coverage write refused") && $0.contains("read-only") })
    }

    /// `Token sha256:<hash>` is a wrong token, for the administrator and for an editor key; the
    /// secrets themselves still work.
    @Test func theStoredHashOfASecretDoesNotAuthenticate() async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ServerFixture.app(store: dir + "/store") { $0.adminTokens = ["s3cret"] }.test(.router) { client in
            let (id, key) = try await Self.create(client)
            for secret in ["s3cret", key] {
                let hashed: HTTPFields = [
                    .authorization: "Token sha256:\(CoverageService.hashToken(secret))",
                    .contentType: "application/json",
                ]
                try await client.execute(
                    uri: "/api/projects/\(id)", method: .patch, headers: hashed,
                    body: ByteBuffer(string: #"{"nom":"stolen"}"#)
                ) { #expect($0.status == .unauthorized) }
            }
            try await client.execute(
                uri: "/api/projects", method: .post,
                headers: [.authorization: "Token sha256:\(CoverageService.hashToken("s3cret"))"],
                body: ByteBuffer(string: #"{"nom":"Q","geometrie":\#(Self.square)}"#)
            ) { #expect($0.status == .unauthorized) }
            try await client.execute(
                uri: "/api/projects/\(id)", method: .patch,
                headers: [.authorization: "Token \(key)", .contentType: "application/json"],
                body: ByteBuffer(string: #"{"nom":"renamed"}"#)
            ) { #expect($0.status == .ok) }
            try await client.execute(uri: "/api/projects/\(id)", method: .get) { r in
                #expect(Self.object(r.body)["nom"] as? String == "renamed")
            }
        }
    }

    @Test func historyHoldsNoPartOfTheAdministratorTokenHash() async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ServerFixture.app(store: dir + "/store") { $0.adminTokens = ["other", "s3cret"] }.test(.router) {
            client in
            let (id, _) = try await Self.create(client)
            try await client.execute(
                uri: "/api/projects/\(id)/etapes", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"statut":"investigation","date_debut":"2025-01-01"}"#)
            ) { #expect($0.status == .ok) }
            try await client.execute(uri: "/api/projects/\(id)/history", method: .get) { r in
                let text = String(buffer: r.body)
                #expect(Self.list(r.body).map { $0["actor"] as? String } == ["admin:2", "admin:2"])
                let hash = Array(CoverageService.hashToken("s3cret"))
                for i in 0...(hash.count - 8) { #expect(!text.contains(String(hash[i..<i + 8]))) }
            }
        }
    }

    /// A world-wide perimeter and one at 1e300: 422 with the reason, nothing stored.
    @Test(arguments: [
        #"[[[-180,-90],[180,-90],[180,90],[-180,90],[-180,-90]]]"#,
        #"[[[1e300,1e300],[1.1e300,1e300],[1e300,-1e300],[1e300,1e300]]]"#,
    ])
    func perimetersOutsideLambert93AreRefusedWith422(coordinates: String) async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ServerFixture.app(store: dir + "/store") { $0.adminTokens = ["s3cret"] }.test(.router) { client in
            try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin,
                body: ByteBuffer(
                    string: #"{"nom":"World","geometrie":{"type":"Polygon","coordinates":\#(coordinates)}}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                #expect(
                    (Self.object(r.body)["detail"] as? String)?.contains("outside Lambert-93's area of use") == true,
                    "\(String(buffer: r.body))")
            }
            let (id, _) = try await Self.create(client)
            try await client.execute(
                uri: "/api/projects/\(id)", method: .patch, headers: Self.admin,
                body: ByteBuffer(string: #"{"geometrie":{"type":"Polygon","coordinates":\#(coordinates)}}"#)
            ) { #expect($0.status == .unprocessableContent) }
            try await client.execute(uri: "/api/projects", method: .get) { #expect(Self.list($0.body).count == 1) }
        }
    }

    /// A drawn perimeter winding 7 times (a star of `n` vertices, WGS84, near Lille).
    static func star(_ n: Int) -> String {
        let points = (0...n).map { k -> String in
            let a = 2 * Double.pi * Double(7 * (k % n)) / Double(n)
            return String(format: "[%.7f,%.7f]", 3.06 + 0.001 * cos(a), 50.63 + 0.001 * sin(a))
        }
        return #"{"type":"Polygon","coordinates":[[\#(points.joined(separator: ","))]]}"#
    }

    /// Issue 11 item 7 for projects: an invalid drawing is repaired only below a vertex budget (the
    /// repair's cost grows faster than its vertices and cannot be interrupted); above, 422 with
    /// what to do. A small one is still repaired.
    @Test func invalidPerimeterAboveTheRepairBudgetIsRefused() async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ServerFixture.app(store: dir + "/store") { $0.adminTokens = ["s3cret"] }.test(.router) { client in
            try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"nom":"Star","geometrie":\#(Self.star(20_000))}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                #expect((Self.object(r.body)["detail"] as? String)?.contains("Fix geometries") == true)
            }
            try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"nom":"Small star","geometrie":\#(Self.star(101))}"#)
            ) { r in #expect(r.status == .created, "\(String(buffer: r.body))") }
        }
    }

    /// `disponible` needs a deliverable this server publishes: a tileset it has, or a diffusion url.
    @Test func aProjectCannotBePublishedInAnUnknownTileset() async throws {
        let step = #""etapes":[{"statut":"disponible","date_debut":"2024-01-01"}]"#
        try await ServerFixture.app(store: ServerFixture.shared + "/store") { $0.adminTokens = ["s3cret"] }.test(
            .router
        ) { client in
            try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin,
                body: ByteBuffer(
                    string:
                        #"{"nom":"A","geometrie":\#(Self.square),\#(step),"livrables":[{"nom":"o","tileset":"nope"}]}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                #expect((Self.object(r.body)["detail"] as? String)?.contains("'nope'") == true)
            }
            // Linked before publication (a tileset still to come), then published: refused.
            let (id, _) = try await Self.create(
                client, name: "B", extra: #","livrables":[{"nom":"o","tileset":"nope"}]"#)
            try await client.execute(
                uri: "/api/projects/\(id)/etapes", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"statut":"disponible","date_debut":"2024-01-01"}"#)
            ) { #expect($0.status == .unprocessableContent) }
            _ = try await Self.create(
                client, name: "C", extra: #",\#(step),"livrables":[{"nom":"o","tileset":"pcrs"}]"#)
            _ = try await Self.create(
                client, name: "D", extra: #",\#(step),"livrables":[{"nom":"o","diffusion":{"url":"https://x"}}]"#)
        }
    }

    /// A PATCH naming no project field is refused (400, naming them); one that changes nothing
    /// writes no history entry.
    @Test func emptyOrUnknownPatchesWriteNoHistory() async throws {
        let dir = try Self.emptyStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ServerFixture.app(store: dir + "/store") { $0.adminTokens = ["s3cret"] }.test(.router) { client in
            let (id, _) = try await Self.create(client)
            try await client.execute(
                uri: "/api/projects/\(id)", method: .patch, headers: Self.admin,
                body: ByteBuffer(string: #"{"colour":"red","nmo":"x"}"#)
            ) { r in
                #expect(r.status == .badRequest)
                #expect((Self.object(r.body)["detail"] as? String)?.contains("'colour', 'nmo'") == true)
            }
            for body in [#"{}"#, #"{"nom":"P"}"#] {
                try await client.execute(
                    uri: "/api/projects/\(id)", method: .patch, headers: Self.admin, body: ByteBuffer(string: body)
                ) { #expect($0.status == .ok) }
            }
            #expect(try await Self.history(client, id).map { $0["action"] as? String } == ["create"])
        }
    }
}

/// Keeps what is logged, for tests that check an operator is told.
final class CollectedLogs: LogHandler, Sendable {
    private let lines = Mutex<[String]>([])
    var messages: [String] { lines.withLock { $0 } }

    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        let line = "\(event.message) \(event.metadata.map { "\($0)" } ?? "")"
        lines.withLock { $0.append(line) }
    }
}
