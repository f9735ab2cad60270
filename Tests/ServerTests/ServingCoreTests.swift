import Coverage
import Foundation
import GeoGrid
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import PropertyBased
import Pyramid
import Raster
import Synchronization
import TestSupport
import Testing

@testable import Server
@testable import Serving

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// One serving core (issue 12): the fast lane and the router answer every tile request alike,
/// and every error kind answers the same status on every route group.
struct ServingCoreTests {
    /// The fixture's pyramid twice: `pcrs` as it is, `gated` served by status, with one
    /// published project covering column 55000 and the left half of 55001 on rows 385938…385940.
    static func gatedStore() throws -> String {
        let dir = try ServerFixture.copy()
        let store = dir + "/store"
        try FileManager.default.copyItem(atPath: store + "/pcrs", toPath: store + "/gated")
        var manifest = try PyramidManifest.load(directory: store + "/gated/2154_5cm")
        manifest.tileset = "gated"
        manifest.publish = .byStatus
        try manifest.save(directory: store + "/gated/2154_5cm")
        return store
    }

    static let admin: HTTPFields = [.authorization: "Token s3cret", .contentType: "application/json"]

    /// Project A, published, over part of `gated`.
    static func projectA() throws -> String {
        let top = 12_000_000 - 385_938 * 12.8
        let area = try PublicationTests.drawn(703_990, top - 3 * 12.8, 704_000 + 12.8 + 6.4, top + 20)
        return """
            {"nom":"A","geometrie":\(area),"etapes":[{"statut":"disponible","date_debut":"2024-01-01"}],
             "livrables":[{"nom":"ortho","tileset":"gated"}]}
            """
    }

    /// Publishes project A through the API.
    static func publish(_ client: some TestClientProtocol) async throws {
        try await client.execute(
            uri: "/api/projects", method: .post, headers: admin, body: ByteBuffer(string: try projectA())
        ) {
            #expect($0.status == .created, "\(String(buffer: $0.body))")
        }
    }

    /// Tile requests as clients make them: the two tilesets and an unknown one, grids whole, by
    /// levels or unknown, levels around the data's, columns and rows inside, at the edge, outside
    /// and far off, every encoding, with or without a token (good or bad) and a validator.
    static var tileRequests: Generator<(String, [(HTTPField.Name, String)]), some SendableSequenceType> {
        let inner = ServerFixture.innerTile
        return zip(
            zip(
                RequestPropertyTests.one(of: ["pcrs", "gated", "gated", "nope"]),
                RequestPropertyTests.mostly(["2154_5cm"], else: ["2154_5cm_20_22", "2154_5cm_0_5", "PM", "x_1_2"]),
                RequestPropertyTests.mostly([22], else: [0, 20, 21, 23]),
                Gen<Int>.int(in: -3...4), Gen<Int>.int(in: -2...3)
            ),
            RequestPropertyTests.mostly(["jpg"], else: ["png", "webp", "jpeg", "gif"]),
            Gen<Bool>.bool, RequestPropertyTests.mostly([""], else: ["Token s3cret", "Token wrong"]),
            Gen<Int>.int(in: 0...2)
        ).map { place, ext, xyz, token, validator in
            let (tileset, grid, z, dc, dr) = place
            // At z22 around the inner tile; elsewhere the same place at that level.
            let shift = 22 - min(z, 22)
            let col = max(0, (inner.col >> shift) + dc * (dc == 4 ? 100_000 : 1))
            let row = max(0, (inner.row >> shift) + dr)
            let uri =
                xyz
                ? "/tiles/\(tileset)/\(grid)/\(z)/\(col)/\(row).\(ext)"
                : "/wmts/1.0.0/\(tileset)/normal/\(grid)/\(z)/\(row)/\(col).\(ext)"
            var headers: [(HTTPField.Name, String)] = []
            if !token.isEmpty { headers.append((.authorization, token)) }
            if validator == 1 { headers.append((.ifNoneMatch, "\"other\"")) }
            if validator == 2 { headers.append((.origin, "http://example.org")) }
            return (uri, headers)
        }
    }

    /// The same request through the fast lane (its plain URL, first on a new connection: a request
    /// right after a routed one on the same connection goes to the router too) and through the
    /// router (a query string keeps the lane out): identical status, headers (but `Date`) and bytes.
    @Test func fastLaneAndRouterAnswerEveryTileRequestAlike() async throws {
        let store = try Self.gatedStore()
        defer { try? FileManager.default.removeItem(atPath: (store as NSString).deletingLastPathComponent) }
        try await ServerFixture.app(store: store) { $0.adminTokens = ["s3cret"] }.test(.live) { client in
            try await Self.publish(client)
            let before = try await ServerFixture.fastLaneCount(client)
            let statuses = Mutex<Set<Int>>([])
            try await ServerFixture.patient(client) { router in
                await propertyCheck(count: 150, input: Self.tileRequests) { request in
                    let (uri, list) = request
                    let headers = HTTPFields(list.map { HTTPField(name: $0.0, value: $0.1) })
                    // First on a connection of its own: the lane takes it whenever it may.
                    let fast = try await ServerFixture.patient(client) {
                        try await $0.execute(uri: uri, method: .get, headers: headers) { $0 }
                    }
                    let routed = try await router.execute(uri: uri + "?via=router", method: .get, headers: headers) {
                        $0
                    }
                    #expect(fast.status == routed.status, "\(uri) \(list)")
                    var (a, b) = (fast.headers, routed.headers)
                    (a[.date], b[.date]) = (nil, nil)
                    #expect(a == b, "\(uri) \(list)")
                    #expect(fast.body == routed.body, "\(uri) \(list)")
                    statuses.withLock { _ = $0.insert(fast.status.code) }
                }
            }
            // The run met the lane's answers, the router's tiles and its errors.
            #expect(try await ServerFixture.fastLaneCount(client) > before)
            #expect(statuses.withLock { $0.isSuperset(of: [200, 400, 404]) }, "\(statuses.withLock { $0 })")
        }
    }

    /// The fast lane counts and logs a tile as Hummingbird's middleware does the router's: one
    /// Prometheus series for both (same metric, same labels and values), log lines with the same
    /// keys. Should a Hummingbird upgrade rename either, the two split and this fails.
    @Test func fastLaneCountsAndLogsLikeTheRouter() async throws {
        let log = LogCapture()
        var c = ServerConfiguration()
        c.store = ServerFixture.shared + "/store"
        c.database = NSTemporaryDirectory() + "dallage-test-\(UUID().uuidString).sqlite"
        c.tmsDirectory = ServerFixture.root + "/config/tms"
        let t = ServerFixture.innerTile
        let path = "/wmts/1.0.0/pcrs/normal/2154_5cm/22/\(t.row)/\(t.col).jpg"
        try await buildApplication(configuration: c, logger: log.logger).test(.live) { live in
            try await ServerFixture.patient(live) { client in try await Self.countsAndLogs(client, path: path) }
        }
        let requests = log.events.filter {
            $0.message == "Request" && $0.metadata["hb.request.path"]?.hasPrefix("/wmts/1.0.0/") == true
        }
        #expect(requests.count >= 3)
        let keys = Set(requests.map { Set($0.metadata.keys) })
        #expect(keys.count == 1, "\(keys)")
    }

    /// The requests of `fastLaneCountsAndLogsLikeTheRouter` and what `/metrics` says of them.
    static func countsAndLogs(_ client: ServerFixture.PatientClient, path: String) async throws {
        let etag = try await client.execute(uri: path, method: .get) { $0.headers[.eTag] ?? "" }
        // HEAD answered 304: a series no other test makes. Asked until the lane answers (a
        // request right after a routed one may still go to the router), then via the router.
        var sent = 0
        var laneAnswered = false
        for uri in Array(repeating: path, count: 20) + [path + "?via=router"] {
            if laneAnswered, !uri.contains("?") { continue }
            let before = try await ServerFixture.fastLaneCount(client)
            try await client.execute(uri: uri, method: .head, headers: [.ifNoneMatch: etag]) {
                #expect($0.status == .notModified)
            }
            sent += 1
            if !uri.contains("?") { laneAnswered = try await ServerFixture.fastLaneCount(client) > before }
        }
        #expect(laneAnswered)
        // Each event loop hands its tally over within a second.
        var lines: [Substring] = []
        try await eventually("both HEAD 304 requests in one /metrics series") {
            let text = try await client.execute(uri: "/metrics", method: .get) { String(buffer: $0.body) }
            lines = text.split(separator: "\n").filter {
                $0.hasPrefix("hb_requests") && $0.contains("\"HEAD\"") && $0.contains("\"304\"")
                    && $0.contains("/wmts/1.0.0/")
            }
            // Two series (lane and router apart) never merge: stop and report them.
            return lines.count > 1 || lines.first?.hasSuffix(" \(sent)") == true
        }
        #expect(lines.count == 1 && lines.first?.hasSuffix(" \(sent)") == true, "\(lines)")
    }

    /// A store that answers later, as an object store does: the fast lane hands its tiles to the
    /// router, which waits for them; the answers are the folder's, byte for byte. A tile read so is
    /// kept hot: the next request for it (here by its WMTS URL) is the fast lane's.
    @Test func aStoreThatAnswersLaterIsServedThroughTheRouter() async throws {
        let folder = FolderStore(ServerFixture.shared + "/store")
        var c = ServerConfiguration()
        c.store = folder.location
        c.database = NSTemporaryDirectory() + "dallage-test-\(UUID().uuidString).sqlite"
        c.tmsDirectory = ServerFixture.root + "/config/tms"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let t = ServerFixture.innerTile
        let stored = try #require(try PyramidReader(directory: folder.location + "/pcrs/2154_5cm").tileData(t))
        let app = try buildApplication(configuration: c, store: LaterStore(folder: folder), logger: logger)
        // Asked through the patient client: beside the whole suite on two cores, Hummingbird's
        // live client (20 s, no setting) once timed out waiting for the first answer.
        try await app.test(.live) { live in
            try await ServerFixture.patient(live) { try await Self.servedLater($0, t, stored) }
        }
    }

    static func servedLater(_ client: ServerFixture.PatientClient, _ t: TileCoordinate, _ stored: [UInt8]) async throws
    {
        let before = try await ServerFixture.fastLaneCount(client)
        for (uri, byFastLane) in [
            ("/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row).jpg", 0),
            ("/wmts/1.0.0/pcrs/normal/2154_5cm/22/\(t.row)/\(t.col).jpg", 1),
        ] {
            try await client.execute(uri: uri, method: .get) { r in
                #expect(r.status == .ok)
                #expect(Array(buffer: r.body) == stored)
            }
            #expect(try await ServerFixture.fastLaneCount(client) == before + byFastLane, "\(uri)")
        }
        try await client.execute(uri: "/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row + 900).jpg", method: .get) {
            #expect($0.status == .notFound)
        }
        #expect(try await ServerFixture.fastLaneCount(client) == before + 1)
    }

    // MARK: - One error model

    /// Every kind, in every style: the status the kind implies, a body in the group's language.
    @Test(arguments: ServingError.Kind.allCases)
    func everyKindAnswersItsStatusInEveryStyle(kind: ServingError.Kind) throws {
        let error = ServingError(kind, locator: "where", "what <went> wrong")
        var statuses: Set<Int> = []
        for style in ErrorStyle.allCases {
            let response = error.response(style: style)
            statuses.insert(response.status.code)
            #expect(response.headers[.cacheControl] == "no-store")
            let body = try #require(response.body.contentLength).description
            #expect(Int(body) ?? 0 > 0)
        }
        // One status per kind, whatever the group.
        #expect(statuses.count == 1)
        let expected: [ServingError.Kind: Int] = [
            .badInput: 400, .notFound: 404, .methodNotAllowed: 405, .unauthorized: 401, .forbidden: 403,
            .conflict: 409, .tooLarge: 413, .unprocessable: 422, .tooMany: 429, .notImplemented: 501,
            .unavailable: 503, .insufficientStorage: 507, .timedOut: 408, .clientGone: 499, .internal: 500,
        ]
        #expect(statuses.first == expected[kind])
        // The names JSON clients and OGC clients read, as the API spelt them before kinds.
        let names: [ServingError.Kind: String] = [
            .badInput: "InvalidParameterValue", .notFound: "NotFound", .methodNotAllowed: "MethodNotAllowed",
            .unauthorized: "Unauthorized", .forbidden: "Forbidden", .conflict: "Conflict", .tooLarge: "TooLarge",
            .unprocessable: "ValidationFailed", .tooMany: "TooManyRequests", .notImplemented: "OperationNotSupported",
            .unavailable: "Unavailable", .insufficientStorage: "InsufficientStorage", .timedOut: "RequestTimeout",
            .clientGone: "ClientGone", .internal: "NoApplicableCode",
        ]
        #expect(error.exceptionCode == names[kind])
    }

    /// A request per error kind and route group, through the router: the status the kind implies
    /// and a body in the group's language (OWS report under /wmts, WMS report under /wms, JSON
    /// elsewhere).
    @Test func everyRouteGroupAnswersEachKindWithItsStatus() async throws {
        let store = try Self.gatedStore()
        defer { try? FileManager.default.removeItem(atPath: (store as NSString).deletingLastPathComponent) }
        let inner = ServerFixture.innerTile
        let getTile =
            "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=pcrs&STYLE=normal&TILEMATRIXSET=2154_5cm&FORMAT=image/jpeg"
        let getMap = "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&CRS=EPSG:2154&WIDTH=16&HEIGHT=16&FORMAT=image/png"
        let box = "&BBOX=704000,7059950,704050,7060000&STYLES="
        let json: HTTPFields = [.contentType: "application/json"]
        // (group, method, uri, headers, body, status)
        let table: [(ErrorStyle, HTTPRequest.Method, String, HTTPFields, String?, Int)] = [
            // WMTS (OWS ExceptionReport)
            (.ows, .get, "/wmts?SERVICE=WMTS", [:], nil, 400),
            (.ows, .get, getTile + "&TILEMATRIX=23&TILEROW=1&TILECOL=1", [:], nil, 400),
            (.ows, .get, "/wmts?SERVICE=WMTS&REQUEST=GetFeatureInfo", [:], nil, 501),
            // Outside the published area of a gated layer: nothing there.
            (
                .ows, .get,
                getTile.replacingOccurrences(of: "LAYER=pcrs", with: "LAYER=gated")
                    + "&TILEMATRIX=22&TILEROW=\(inner.row)&TILECOL=\(inner.col + 3)", [:], nil, 404
            ),
            (.ows, .post, "/wmts/1.0.0/WMTSCapabilities.xml", [:], "x", 405),
            // WMS (ServiceExceptionReport)
            (.wms, .get, "/wms?SERVICE=WMS", [:], nil, 400),
            (.wms, .get, getMap + "&LAYERS=nope" + box, [:], nil, 400),
            (.wms, .get, "/wms?SERVICE=WMS&REQUEST=GetFeatureInfo", [:], nil, 501),
            (.wms, .post, "/wms", [:], "x", 405),
            // Tiles, OGC API Tiles (JSON)
            (.json, .get, "/tiles/nope/2154_5cm/22/1/1.jpg", [:], nil, 400),
            (.json, .get, "/tiles/pcrs/2154_5cm/22/1/1.jpg", [:], nil, 404),
            (.json, .get, "/tiles/gated/2154_5cm/22/\(inner.col + 3)/\(inner.row).jpg", [:], nil, 404),
            (.json, .delete, "/tiles/pcrs/2154_5cm/22/1/1.jpg", [:], nil, 405),
            (.json, .get, "/ogc/collections/nope", [:], nil, 404),
            // Coverage (JSON)
            (.json, .post, "/api/projects", json, #"{"nom":"X"}"#, 401),
            (.json, .post, "/api/projects", Self.admin, "{", 400),
            (.json, .get, "/api/projects/99999", [:], nil, 404),
            (.json, .post, "/api/projects", Self.admin, try Self.projectA(), 409),
            (.json, .post, "/api/projects", Self.admin, #"{"nom":"Y","perimetres":["commune:00000"]}"#, 422),
            // Extracts (JSON)
            (.json, .get, "/api/extracts/dalles", [:], nil, 400),
            (.json, .get, "/api/extracts/0123456789abcdef0123456789abcdef", [:], nil, 404),
            (.json, .post, "/api/extracts", json, #"{"tileset":"nope","territory":"commune:1"}"#, 404),
            (
                .json, .post, "/api/extracts", json,
                #"{"tileset":"pcrs","geometry":{"type":"Point","coordinates":[3,50]}}"#, 400
            ),
            (
                .json, .post, "/api/extracts", json,
                #"{"tileset":"gated","geometry":{"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},"coordinates":[[[704030,7059950],[704050,7059950],[704050,7059999],[704030,7059950]]]}}"#,
                403
            ),
            (
                .json, .post, "/api/extracts", json,
                #"{"tileset":"pcrs","geometry":{"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},"coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}}"#,
                422
            ),
        ]
        try await ServerFixture.app(store: store) { $0.adminTokens = ["s3cret"] }.test(.router) { client in
            try await Self.publish(client)
            for (style, method, uri, headers, body, status) in table {
                try await client.execute(
                    uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }
                ) { r in
                    #expect(r.status.code == status, "\(method) \(uri): \(String(buffer: r.body))")
                    #expect(ErrorStyle(path: String(uri.prefix { $0 != "?" })) == style)
                    let text = String(buffer: r.body)
                    switch style {
                    case .ows:
                        #expect(text.contains("<ExceptionReport") && Self.parses(r.body), "\(uri): \(text)")
                    case .wms:
                        #expect(text.contains("<ServiceExceptionReport") && Self.parses(r.body), "\(uri): \(text)")
                    case .json:
                        let object = try? JSONSerialization.jsonObject(with: Data(buffer: r.body)) as? [String: Any]
                        #expect(object?["error"] is String && object?["detail"] is String, "\(uri): \(text)")
                    }
                }
            }
        }
    }

    static func parses(_ body: ByteBuffer) -> Bool { XMLParser(data: Data(buffer: body)).parse() }
}

/// The folder store, read as if over a network: every stored tile answers later.
struct LaterStore: PyramidStore {
    let folder: FolderStore
    var location: String { folder.location }
    func list() throws -> [PyramidListing] { try folder.list() }
    func open(_ pyramid: PyramidListing, openShards: Int) throws -> any PyramidSource {
        LaterSource(inner: try folder.open(pyramid, openShards: openShards))
    }
}

final class LaterSource: PyramidSource {
    let inner: any PyramidSource
    init(inner: any PyramidSource) { self.inner = inner }
    var manifest: PyramidManifest { inner.manifest }

    func storedTile<Bytes: Sendable>(_ tile: TileCoordinate, into allocate: @escaping TileAllocator<Bytes>)
        -> TileRead<Bytes>
    {
        let inner = inner
        return .later { () async throws(ShardError) -> StoredBytes<Bytes>? in
            await Task.yield()
            return try await inner.storedTile(tile, into: allocate).value()
        }
    }

    func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]? { try inner.decodeTile(tile) }

    func withTileAndMask<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ mask: UnsafeRawBufferPointer?) throws -> R
    ) throws -> R? {
        try inner.withTileAndMask(tile, body)
    }

    func tiledFootprint() throws -> Geometry? { try inner.tiledFootprint() }

    func cover(_ tile: TileCoordinate) throws -> TileCover { try inner.cover(tile) }
}
