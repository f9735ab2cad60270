import Coverage
import Foundation
import GeoGrid
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Pyramid
import Raster
import S3
import Serving
import Synchronization
import Testing

@testable import Server

/// What clients see when what the server reads from stops answering for a while (an object store
/// down), and when a request is too big or a result is gone: the status the kind implies on every
/// route, never a 500, and a write that was stored is answered as stored.
@Suite struct OutageTests {
    static let admin: HTTPFields = [.authorization: "Token s3cret", .contentType: "application/json"]

    static func app(_ outage: Outage, configure: (inout ServerConfiguration) -> Void = { _ in }) throws
        -> some ApplicationProtocol
    {
        let folder = FolderStore(ServerFixture.shared + "/store")
        var c = ServerConfiguration()
        c.store = folder.location
        c.database = NSTemporaryDirectory() + "dallage-outage-\(UUID().uuidString).sqlite"
        c.tmsDirectory = ServerFixture.root + "/config/tms"
        c.adminTokens = ["s3cret"]
        configure(&c)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try buildApplication(
            configuration: c, store: OutageStore(folder: folder, outage: outage), logger: logger)
    }

    static func object(_ body: ByteBuffer) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]) ?? [:]
    }

    /// The store stops answering: tiles, WMS maps, a project's page and extracts answer 503 with
    /// `Retry-After` and no address of the store; a project's change is stored and answered 200
    /// without its progress, which comes back with the store.
    @Test func aStoreThatStopsAnsweringIs503AndAChangeStillLands() async throws {
        let outage = Outage()
        let t = ServerFixture.innerTile
        let square =
            #"{"type":"Polygon","coordinates":[[[3.0,50.6],[3.01,50.6],[3.01,50.61],[3.0,50.61],[3.0,50.6]]]}"#
        let project = #"{"nom":"P","geometrie":\#(square),"livrables":[{"nom":"o","tileset":"pcrs"}]}"#
        let getMap =
            "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=pcrs&STYLES=&CRS=EPSG:2154&BBOX=704000,7059950,704050,7060000&WIDTH=16&HEIGHT=16&FORMAT=image/png"
        let extract =
            #"{"tileset":"pcrs","geometry":{"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},"coordinates":[[[704005,7059955],[704045,7059955],[704025,7059995],[704005,7059955]]]},"resolution":0.1}"#
        try await Self.app(outage).test(.router) { client in
            let id = try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin, body: ByteBuffer(string: project)
            ) { r in
                #expect(r.status == .created, "\(String(buffer: r.body))")
                #expect((Self.object(r.body)["avancement"] as? [Any])?.count == 1)
                return Self.object(r.body)["id"] as? Int ?? 0
            }
            try await client.execute(uri: getMap, method: .get) { #expect($0.status == .ok) }

            outage.down.withLock { $0 = true }
            for (method, uri, body) in [
                (HTTPRequest.Method.get, "/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row).jpg", nil),
                (.get, getMap, nil),
                (.get, "/api/projects/\(id)", nil),
                (.get, "/api/projects/\(id)/missing.geojson", nil),
                (.post, "/api/extracts", extract),
            ] as [(HTTPRequest.Method, String, String?)] {
                try await client.execute(
                    uri: uri, method: method, headers: [.contentType: "application/json"],
                    body: body.map { ByteBuffer(string: $0) }
                ) { r in
                    let text = String(buffer: r.body)
                    #expect(r.status == .serviceUnavailable, "\(method) \(uri): \(r.status) \(text)")
                    #expect(r.headers[.retryAfter] != nil, "\(uri)")
                    #expect(!text.contains("s3://") && !text.contains("bucket"), "\(uri): \(text)")
                }
            }
            try await client.execute(
                uri: "/api/projects/\(id)", method: .patch, headers: Self.admin,
                body: ByteBuffer(string: #"{"nom":"renamed"}"#)
            ) { r in
                #expect(r.status == .ok, "\(String(buffer: r.body))")
                let o = Self.object(r.body)
                #expect(o["nom"] as? String == "renamed")
                #expect(o["avancement"] == nil && (o["avancement_indisponible"] as? String)?.isEmpty == false, "\(o)")
            }

            outage.down.withLock { $0 = false }
            try await client.execute(uri: "/api/projects/\(id)", method: .get) { r in
                #expect(r.status == .ok)
                #expect(Self.object(r.body)["nom"] as? String == "renamed")
                #expect((Self.object(r.body)["avancement"] as? [Any])?.count == 1)
            }
            try await client.execute(uri: getMap, method: .get) { #expect($0.status == .ok) }
        }
    }

    /// A tileset's source index that cannot be read now: the list of dalles answers 503, not
    /// "no source index" (404), and answers again once the store does.
    @Test func aSourceIndexThatCannotBeReadNowIs503() async throws {
        let outage = Outage()
        let triangle =
            #"{"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},"coordinates":[[[704005,7059955],[704045,7059955],[704025,7059995],[704005,7059955]]]}"#
        let uri =
            "/api/extracts/dalles?tileset=pcrs&geometry="
            + (triangle.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")
        try await Self.app(outage).test(.router) { client in
            try await client.execute(uri: uri, method: .get) { #expect($0.status == .ok) }
            outage.filesDown.withLock { $0 = true }
            try await client.execute(uri: uri, method: .get) { r in
                #expect(r.status == .serviceUnavailable, "\(String(buffer: r.body))")
                #expect(!String(buffer: r.body).contains("bucket"))
            }
            outage.filesDown.withLock { $0 = false }
            try await client.execute(uri: uri, method: .get) { #expect($0.status == .ok) }
        }
    }

    /// Each way an object store fails, as a client reads it: what may pass is 503, what is a
    /// fault of the server's settings 500, an absent object 404; the store's address never shows.
    @Test(arguments: [
        (S3Error.Kind.unavailable, 503), (.unreachable, 503), (.timeout, 503), (.invalidResponse, 503),
        (.notFound, 404), (.noSuchBucket, 500), (.accessDenied, 500), (.invalidCredentials, 500), (.other, 500),
    ])
    func objectStoreFailuresAnswerByKind(kind: S3Error.Kind, status: Int) {
        let failure = S3Error(
            kind: kind, operation: "GET", resource: "s3://secret-bucket/pcrs/2154_5cm/footprint.json",
            message: "what the store said")
        let e = ServingError.from(failure, what: "the request failed on the server")
        for style in ErrorStyle.allCases {
            #expect(e.response(style: style).status.code == status)
        }
        #expect(!e.message.contains("secret-bucket"))
    }

    /// A project body over the API's 16 MiB: 413 in JSON, before authentication, like extracts'.
    @Test func aCoverageBodyTooLargeIs413() async throws {
        let big = ByteBuffer(repeating: UInt8(ascii: " "), count: (16 << 20) + 1)
        try await Self.app(Outage()).test(.router) { client in
            for (method, uri) in [(HTTPRequest.Method.post, "/api/projects"), (.patch, "/api/projects/1")] {
                try await client.execute(uri: uri, method: method, headers: Self.admin, body: big) { r in
                    #expect(r.status == .contentTooLarge, "\(method) \(uri)")
                    #expect(Self.object(r.body)["error"] as? String == "TooLarge", "\(String(buffer: r.body))")
                }
            }
        }
    }

    /// A drawn perimeter whose ring does not end where it starts (a common slip in hand-written
    /// GeoJSON): 422 with the reason, nothing stored.
    @Test func aRingThatIsNotClosedIs422() async throws {
        let open = #"{"type":"Polygon","coordinates":[[[3.0,50.6],[3.01,50.6],[3.01,50.61],[3.0,50.61]]]}"#
        try await Self.app(Outage()).test(.router) { client in
            try await client.execute(
                uri: "/api/projects", method: .post, headers: Self.admin,
                body: ByteBuffer(string: #"{"nom":"P","geometrie":\#(open)}"#)
            ) { r in
                #expect(r.status == .unprocessableContent, "\(String(buffer: r.body))")
                #expect((Self.object(r.body)["detail"] as? String)?.contains("geometrie") == true)
            }
            try await client.execute(uri: "/api/projects", method: .get) { r in
                #expect(String(buffer: r.body).contains("\"P\"") == false)
            }
        }
    }

    /// A finished job whose file is gone (the folder cleared, not shared between replicas): 404
    /// saying so, without the server's path.
    @Test func aFinishedExtractWhoseFileIsGoneIs404() async throws {
        let database = NSTemporaryDirectory() + "dallage-gone-\(UUID().uuidString).sqlite"
        let results = NSTemporaryDirectory() + "results-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: results) }
        let jobs = try SQLiteCoverageStore(path: database)
        var job = ExtractJob(
            id: "0123456789abcdef0123456789abcdef", client: "c", request: #"{"tileset":"pcrs"}"#, estimatedBytes: 1,
            at: "2026-12-07T00:00:00Z")
        job.state = .done
        try await jobs.insertJob(job)
        let id = job.id
        let configure: (inout ServerConfiguration) -> Void = {
            $0.database = database
            $0.extractsDirectory = results
        }
        try await Self.app(Outage(), configure: configure).test(.router) { client in
            try await client.execute(uri: "/api/extracts/\(id)/download", method: .get) { r in
                #expect(r.status == .notFound, "\(String(buffer: r.body))")
                let text = String(buffer: r.body)
                #expect(text.contains("gone") && !text.contains(results), "\(text)")
            }
        }
    }
}

/// Whether the store answers, switched by the test: all of it, or only its files beside the
/// pyramids (a tileset's source index).
final class Outage: Sendable {
    let down = Mutex(false)
    let filesDown = Mutex(false)
    var isDown: Bool { down.withLock { $0 } }
}

/// The folder store, read as an object store that can stop answering: while `outage` is down
/// every read fails as S3 clients fail then (a transient shard error; the footprint's S3 error).
struct OutageStore: PyramidStore {
    let folder: FolderStore
    let outage: Outage
    var location: String { folder.location }
    func list() throws -> [PyramidListing] { try folder.list() }
    func read(_ relativePath: String) throws -> Data? {
        if outage.isDown || outage.filesDown.withLock({ $0 }) {
            throw S3Error(
                kind: .timeout, operation: "GET", resource: "s3://bucket/\(relativePath)", message: "no answer in 20 s")
        }
        return try folder.read(relativePath)
    }
    func open(_ pyramid: PyramidListing, openShards: Int) throws -> any PyramidSource {
        OutageSource(inner: try folder.open(pyramid, openShards: openShards), outage: outage)
    }
}

final class OutageSource: PyramidSource {
    let inner: any PyramidSource
    let outage: Outage
    init(inner: any PyramidSource, outage: Outage) {
        self.inner = inner
        self.outage = outage
    }
    var manifest: PyramidManifest { inner.manifest }

    var refused: ShardError {
        ShardError(path: "s3://bucket/pcrs/shard.tif", reason: "connection refused", transient: true)
    }

    func storedTile<Bytes: Sendable>(_ tile: TileCoordinate, into allocate: @escaping TileAllocator<Bytes>)
        -> TileRead<Bytes>
    {
        guard outage.isDown else { return inner.storedTile(tile, into: allocate) }
        let refused = refused
        return .later { () async throws(ShardError) -> StoredBytes<Bytes>? in throw refused }
    }

    func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]? {
        if outage.isDown { throw refused }
        return try inner.decodeTile(tile)
    }

    func withTileAndMask<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ mask: UnsafeRawBufferPointer?) throws -> R
    ) throws -> R? {
        if outage.isDown { throw refused }
        return try inner.withTileAndMask(tile, body)
    }

    func tiledFootprint() throws -> Geometry? {
        if outage.isDown {
            throw S3Error(
                kind: .unreachable, operation: "GET", resource: "s3://bucket/pcrs/2154_5cm/footprint.json",
                message: "connection refused")
        }
        return try inner.tiledFootprint()
    }

    func cover(_ tile: TileCoordinate) throws -> TileCover {
        if outage.isDown { throw refused }
        return try inner.cover(tile)
    }
}
