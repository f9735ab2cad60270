import Foundation
import GeoGrid
import HTTPTypes
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// Answers the commonest request — a stored tile by its XYZ or WMTS REST URL — on the connection's
/// event loop, straight after HTTP parsing: no conversion to `HTTPRequest`, no task, no router, no
/// middleware chain. One instance per connection, placed by ``FastLaneHTTP1Channel``.
///
/// Anything else goes on to Hummingbird untouched: other routes, query strings, percent-escapes,
/// `Authorization` (administrators see gated tilesets), HTTP/1.0 or `Connection: close`, tiles of
/// gated tilesets not wholly inside the published area, other encodings, absent tiles and every
/// error. The answer — status, headers, bytes — is the router's for the same request (a test
/// compares them); it is counted in the same metrics series and logged with the same method and
/// path as the router's access log (without its request id). While a request is with the router,
/// later requests on the connection follow it there so pipelined responses keep their order.
final class TileFastLane: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let service: TileService
    private let serverName: String
    private let logger: Logger
    private let logRequests: Bool
    /// This connection's copy of the catalog, refreshed when the catalog's version moves.
    private var pyramids: [String: [String: ServedPyramid]] = [:]
    private var pyramidsVersion = -1
    /// Requests handed to the router whose response has not ended yet.
    private var withRouter = 0
    /// The answer to the request being read, sent when its end arrives.
    private var pending: Answer?
    private var date = HTTPDate()
    /// Publication decisions for gated pyramids, valid for `publishedGeneration`.
    private var published: [PublishedKey: Bool] = [:]
    private var publishedGeneration = -1

    private struct PublishedKey: Hashable {
        var tileset: String
        var grid: String
        var block: TileCoordinate
    }

    private struct Answer {
        var head: HTTPResponseHead
        var body: ByteBuffer?
        var route: FastRoute
        var method: HTTPMethod
        var started: UInt64
    }

    init(service: TileService, serverName: String, logger: Logger) {
        self.service = service
        self.serverName = serverName
        self.logger = logger
        logRequests = logger.logLevel <= .info
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            if withRouter == 0, let answer = answer(request) {
                pending = answer
                if logRequests {
                    logger.info(
                        "Request",
                        metadata: [
                            "hb.request.path": .string(request.uri),
                            "hb.request.method": .string(request.method.rawValue),
                        ])
                }
                return
            }
            withRouter += 1
            context.fireChannelRead(data)
        case .body:
            if pending == nil { context.fireChannelRead(data) }
        case .end:
            guard let p = pending else { return context.fireChannelRead(data) }
            pending = nil
            context.write(wrapOutboundOut(.head(p.head)), promise: nil)
            if let body = p.body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            service.fastLaneAnswers.add(1, ordering: .relaxed)
            FastLaneMetrics.shared.record(
                p.route, method: p.method, status: p.head.status,
                nanoseconds: DispatchTime.now().uptimeNanoseconds - p.started)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { withRouter = max(0, withRouter - 1) }
        context.write(data, promise: promise)
    }

    /// Whether a tile of a gated pyramid lies wholly inside the published area. Decisions are
    /// kept on the connection for the current gate generation, for the tile's block four levels
    /// up (16×16 tiles: one decision serves a whole neighbourhood) and, when the block is not
    /// wholly published, for the tile itself. Tiles not wholly inside go to the router, which
    /// clips or refuses them.
    private func isPublished(_ pyramid: ServedPyramid, _ tile: TileCoordinate) -> Bool {
        guard let gate = service.gate else { return false }
        let generation = gate.generation
        if generation != publishedGeneration || published.count > 65_536 {
            published.removeAll(keepingCapacity: true)
            publishedGeneration = generation
        }
        let tms = pyramid.manifest.tileMatrixSet
        let blockLevels = min(4, max(0, tile.z - pyramid.manifest.minZoom))
        // The block first, then (when it is not the tile itself) the tile.
        for up in stride(from: blockLevels, through: 0, by: -max(1, blockLevels)) {
            let block = tile.ancestor(levels: up)
            let key = PublishedKey(tileset: pyramid.tileset, grid: pyramid.grid, block: block)
            if let inside = published[key] {
                if inside { return true }
                continue
            }
            guard
                let (decision, at) = try? gate.decide(
                    tileset: pyramid.tileset, crs: tms.crs, tile: tms.bounds(of: block))
            else { return false }
            let inside = if case .inside = decision { true } else { false }
            if at == generation { published[key] = inside }
            if inside { return true }
        }
        return false
    }

    /// The full answer when the request is a plain stored tile, else nil.
    private func answer(_ request: HTTPRequestHead) -> Answer? {
        let started = DispatchTime.now().uptimeNanoseconds
        guard request.method == .GET || request.method == .HEAD, request.version == .http1_1, request.isKeepAlive,
            let (route, tile) = FastRoute.parse(request.uri),
            !request.headers.contains(name: "authorization")
        else { return nil }
        let version = service.catalog.version
        if version != pyramidsVersion { (pyramidsVersion, pyramids) = service.catalog.snapshot() }
        guard
            let t = service.plainStoredTile(
                tile, in: pyramids, strictLimits: route == .wmtsREST, published: isPublished)
        else { return nil }
        // The headers in the router's order: the tile's own, the length (Hummingbird adds it from
        // the body), CORS, then Hummingbird's date and server.
        let current = t.isCurrent(ifNoneMatch: request.headers.first(name: "if-none-match"))
        var headers = HTTPHeaders()
        headers.reserveCapacity(8)
        t.headerFields(current: current) { headers.add(name: $0.canonicalName, value: $1) }
        if !current { headers.add(name: "Content-Length", value: String(t.bytes.readableBytes)) }
        if request.headers.contains(name: "origin") { headers.add(name: "Access-Control-Allow-Origin", value: "*") }
        headers.add(name: "Date", value: date.now())
        headers.add(name: "Server", value: serverName)
        let body = !current && request.method == .GET ? t.bytes : nil
        if let body { Document.bytesSent.increment(by: Int64(body.readableBytes)) }
        return Answer(
            head: HTTPResponseHead(version: .http1_1, status: current ? .notModified : .ok, headers: headers),
            body: body, route: route, method: request.method, started: started)
    }
}

/// Hummingbird's HTTP/1 channel with the tile fast lane between the HTTP parser and the
/// conversion to Swift HTTP Types, so a stored tile costs no more than parsing its request.
struct FastLaneHTTP1Channel: HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let fastLane: @Sendable () -> TileFastLane

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false)
            try channel.pipeline.syncOperations.addHandler(fastLane())
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(logger: logger))
            return try NIOAsyncChannel(
                wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    func handle(value asyncChannel: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1 with the tile fast lane in front of the router.
    static func http1(fastLane: @escaping @Sendable () -> TileFastLane) -> HTTPServerBuilder {
        .init { responder in FastLaneHTTP1Channel(responder: responder, fastLane: fastLane) }
    }
}

/// The tile URLs the fast lane knows, named as the router names them in metrics.
enum FastRoute: String, Sendable, CaseIterable {
    case xyz = "/tiles/{tileset}/{tms}/{z}/{x}/{file}"
    case wmtsREST = "/wmts/1.0.0/{layer}/{style}/{tms}/{z}/{row}/{file}"

    /// `/tiles/T/G/z/x/y.ext` or `/wmts/1.0.0/T/normal/G/z/row/col.ext`, with plain names and
    /// numbers only; nil for anything else (the router then decides). Works on the UTF-8 bytes:
    /// this runs for every request.
    static func parse(_ path: String) -> (FastRoute, TileRequest)? {
        var path = path
        return path.withUTF8 { bytes -> (FastRoute, TileRequest)? in
            guard bytes.count < 256, bytes.first == UInt8(ascii: "/"),
                !bytes.contains(where: { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "%") })
            else { return nil }
            let parts = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            func text(_ i: Int) -> Substring { Substring(decoding: parts[i], as: UTF8.self) }
            func equals(_ i: Int, _ word: StaticString) -> Bool {
                parts[i].elementsEqual(UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount))
            }
            let route: FastRoute
            let names: (tileset: Int, grid: Int, z: Int, first: Int)
            if parts.count == 7, equals(1, "tiles") {
                (route, names) = (.xyz, (2, 3, 4, 5))
            } else if parts.count == 9, equals(1, "wmts"), equals(2, "1.0.0"), equals(4, "normal") {
                (route, names) = (.wmtsREST, (3, 5, 6, 7))
            } else {
                return nil
            }
            let file = parts[parts.count - 1]
            guard !parts[names.tileset].isEmpty, !parts[names.grid].isEmpty,
                let dot = file.lastIndex(of: UInt8(ascii: ".")),
                let encoding = TileEncoding(extension: Substring(decoding: file[(dot + 1)...], as: UTF8.self)),
                let z = tileIndex(parts[names.z]), let a = tileIndex(parts[names.first]),
                let b = tileIndex(file[..<dot])
            else { return nil }
            // XYZ is z/x/y (column first), WMTS REST z/row/col.
            let (col, row) = route == .xyz ? (a, b) : (b, a)
            let tile = TileRequest(
                tileset: String(text(names.tileset)), grid: String(text(names.grid)), z: z, col: col, row: row,
                encoding: encoding)
            return (route, tile)
        }
    }

}

/// The series Hummingbird's `MetricsMiddleware` writes for a request, made once and shared, so
/// a fast-lane tile counts like any other request (`hb_requests`, `http_server_request_duration`).
final class FastLaneMetrics: Sendable {
    static let shared = FastLaneMetrics()

    private struct Series: Sendable {
        let counter: Counter
        let timer: Metrics.Timer
    }
    /// By route, method (GET, HEAD) and status (200, 304), in that order.
    private let series: [Series]
    private static let methods: [HTTPMethod] = [.GET, .HEAD]
    private static let statuses: [HTTPResponseStatus] = [.ok, .notModified]

    /// Requests answered by the fast lane (the rest of `hb_requests` went through the router).
    let answered = Counter(label: "dallage_fast_lane_requests_total")

    private init() {
        series = FastRoute.allCases.flatMap { route in
            Self.methods.flatMap { method in
                Self.statuses.map { status in
                    let dimensions = [
                        ("http.route", route.rawValue), ("http.request.method", method.rawValue),
                        ("http.response.status_code", String(status.code)),
                    ]
                    return Series(
                        counter: Counter(label: "hb.requests", dimensions: dimensions),
                        timer: Metrics.Timer(
                            label: "http.server.request.duration", dimensions: dimensions,
                            preferredDisplayUnit: .seconds))
                }
            }
        }
    }

    func record(
        _ route: FastRoute, method: HTTPMethod, status: HTTPResponseStatus, nanoseconds: UInt64
    ) {
        guard let r = FastRoute.allCases.firstIndex(of: route), let m = Self.methods.firstIndex(of: method),
            let s = Self.statuses.firstIndex(of: status)
        else { return }
        let one = series[(r * Self.methods.count + m) * Self.statuses.count + s]
        answered.increment()
        one.counter.increment()
        one.timer.recordNanoseconds(Int64(nanoseconds))
    }
}

/// The `Date` header, formatted once a second.
struct HTTPDate {
    private var second = 0
    private var text = ""

    mutating func now() -> String {
        var t = time(nil)
        if t != second {
            var parts = tm()
            gmtime_r(&t, &parts)
            var buffer = [CChar](repeating: 0, count: 40)
            let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
            text = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            second = t
        }
        return text
    }
}
