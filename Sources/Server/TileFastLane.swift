import Foundation
import GeoGrid
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Pyramid
import Serving

/// Answers the commonest request — a stored tile by its XYZ or WMTS REST URL — on the connection's
/// event loop, on the bytes as they arrive: no HTTP parser, no `HTTPRequest`, no task, no router,
/// no middleware chain, and the response head written as bytes. One instance per connection, first
/// in the pipeline (placed by ``FastLaneHTTP1Channel``).
///
/// It frames each request itself (head up to the blank line, then `Content-Length` bytes of body)
/// and hands every request it does not answer, whole and in order, to NIO's parser and on to
/// Hummingbird: other routes, query strings, percent-escapes, methods other than GET and HEAD,
/// bodies, `Authorization` (administrators see gated tilesets), `Expect`, tiles of gated tilesets
/// not wholly inside the published area, other encodings, absent tiles and every error. Anything it
/// cannot frame with certainty — HTTP/1.0, `Connection` or `Proxy-Connection: close`, `Upgrade`,
/// `CONNECT`, `Transfer-Encoding`, a bare CR or LF, odd bytes in a header, a head over 8 kB — sends
/// the rest of the connection to the parser untouched. While a request is with the router, later
/// requests follow it there so pipelined responses keep their order; while the socket is full it
/// stops reading; end of input and graceful shutdown wait until its answers are written.
///
/// The answer — status, headers, bytes — is the router's for the same request (a test compares
/// them); it is counted in the same metrics series and logged like the router's access log (request
/// id from the same sequence, method, path).
final class TileFastLane: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = ByteBuffer

    private let service: TileService
    private let serverName: String
    private let logger: Logger
    private let logRequests: Bool
    /// Bytes received and not yet answered or handed on.
    private var held: ByteBuffer?
    /// Body bytes of a handed-on request still to hand on.
    private var bodyToForward = 0
    /// Once set, every byte goes to the parser as it comes.
    private var passThrough = false
    /// Set while the socket does not take more: requests wait in `held` and reads are put off
    /// (`readPutOff`) until it drains, so a client that pipelines without reading cannot make
    /// the server buffer answers without bound.
    private var paused = false
    private var readPutOff = false
    /// Whether bytes went on to the parser since the last read completed: when none did, the
    /// handlers after this one have nothing to hear about (the completion is not passed on).
    private var handedOn = false
    /// How far the incomplete head at the start of `held` has been searched for its end.
    private var scanned = 0
    /// End of input or a graceful shutdown, held back until this lane's answers are written:
    /// on hearing either, Hummingbird closes the connection, which would drop them.
    private var heldEvents: [Any] = []
    /// Requests handed to the router whose response has not ended yet (``RouterResponses``).
    fileprivate var withRouter = 0
    /// This connection's copy of the catalog, refreshed when the catalog's version moves.
    private var catalog = CatalogSnapshot.empty
    private var date = HTTPDate()
    /// Ready responses of the tiles answered lately on this connection's event loop.
    private let hot: HotTiles
    /// This event loop's count of what the fast lane did, for the shared metrics.
    private let tally: FastLaneTally
    /// Publication decisions for gated pyramids, kept on the connection.
    private var published = PublicationMemo()

    /// The longest request head framed here; longer ones go to the parser and its limits.
    static let maxHead = 8192

    /// Idle and header-read timeouts (``ConnectionLimits``), kept here because this handler sees
    /// every byte of the connection, whoever answers it.
    private let limits: ConnectionLimits
    /// When the first byte of a request whose head is not complete yet arrived.
    private var headStarted: NIODeadline?
    /// The last time the client sent bytes or this lane answered.
    private var lastActivity = NIODeadline.now()
    /// Set by ``RouterResponses`` between a request head the parser read and its end.
    fileprivate var parserInRequest = false
    private var timer: Scheduled<Void>?

    init(service: TileService, loop: FastLaneLoop, limits: ConnectionLimits, serverName: String, logger: Logger) {
        self.service = service
        self.limits = limits
        hot = loop.hot
        tally = loop.tally
        self.serverName = serverName
        self.logger = logger
        logRequests = logger.logLevel <= .info
    }

    func handlerAdded(context: ChannelHandlerContext) {
        scheduleCheck(context, at: .now() + min(limits.idleTimeout, limits.headerTimeout))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        lastActivity = .now()
        if passThrough {
            // The parser frames from here on: a request begins with bytes read while it is not
            // inside one (``RouterResponses`` clears this at the head).
            if !parserInRequest, headStarted == nil { headStarted = lastActivity }
            return context.fireChannelRead(data)
        }
        if held == nil || held!.readableBytes == 0 {
            held = bytes
        } else {
            held!.writeBuffer(&bytes)
        }
        if !paused { process(context: context) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if handedOn || passThrough {
            handedOn = false
            context.fireChannelReadComplete()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if paused, context.channel.isWritable {
            paused = false
            process(context: context)
            // Requests handed on here reach Hummingbird with the completion of a read.
            if handedOn {
                handedOn = false
                context.fireChannelReadComplete()
            }
            if !paused, readPutOff {
                readPutOff = false
                context.read()
            }
            releaseHeldEvents(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        let quiesce = event is ChannelShouldQuiesceEvent
        guard quiesce || event as? ChannelEvent == .inputClosed else {
            return context.fireUserInboundEventTriggered(event)
        }
        // Shutting down: new requests go to the router, which answers them or closes.
        if quiesce { passThrough = true }
        heldEvents.append(event)
        releaseHeldEvents(context: context)
    }

    /// Passes on the held events once nothing is left to answer: what remains in `held` then
    /// goes to the parser, and the events follow the answers already written.
    private func releaseHeldEvents(context: ChannelHandlerContext) {
        guard !heldEvents.isEmpty, !paused || passThrough else { return }
        if let rest = held, rest.readableBytes > 0 {
            held = nil
            handOn(context, rest)
        }
        if handedOn {
            handedOn = false
            context.fireChannelReadComplete()
        }
        let events = heldEvents
        heldEvents = []
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in
            for event in events { context.fireUserInboundEventTriggered(event) }
        }
    }

    func read(context: ChannelHandlerContext) {
        if paused {
            readPutOff = true
        } else {
            context.read()
        }
    }

    /// Answers or hands on the requests in `held`, in order, until they run out, one is
    /// incomplete, or the socket is full.
    private func process(context: ChannelHandlerContext) {
        var answered = false
        while !passThrough, var buffer = held, buffer.readableBytes > 0 {
            held = nil  // unique while it is worked on
            defer { held = buffer }
            if bodyToForward > 0 {
                let n = min(bodyToForward, buffer.readableBytes)
                bodyToForward -= n
                handOn(context, buffer.readSlice(length: n)!)
                continue
            }
            let from = max(0, scanned - 3)
            let framing = buffer.withUnsafeReadableBytes { RequestHead.frame($0, from: from) }
            switch framing {
            case .incomplete:
                scanned = buffer.readableBytes
                if headStarted == nil { headStarted = lastActivity }
                if buffer.readableBytes <= Self.maxHead { break }
                fallthrough
            case .unframed:
                passThrough = true
                handOn(context, buffer.readSlice(length: buffer.readableBytes)!)
            case .request(let head):
                scanned = 0
                headStarted = nil
                if withRouter == 0, !context.channel.isWritable {
                    paused = true
                    break
                }
                if withRouter == 0, let (header, body) = answer(head, in: buffer, context: context) {
                    buffer.moveReaderIndex(forwardBy: head.length)
                    context.write(wrapOutboundOut(header), promise: nil)
                    if let body { context.write(wrapOutboundOut(body), promise: nil) }
                    answered = true
                    continue
                }
                withRouter += 1
                handOn(context, buffer.readSlice(length: head.length)!)
                bodyToForward = head.contentLength
                if !head.keepAlive { passThrough = true }
                continue
            }
            break
        }
        if passThrough, let rest = held, rest.readableBytes > 0 {
            held = nil
            handOn(context, rest)
        }
        if held?.readableBytes == 0 { held = nil }
        if answered { context.flush() }
    }

    /// Closes the connection when a request head has taken longer than the header timeout (with
    /// a 408 when nothing else is being answered), or when nothing has been under way for the idle
    /// timeout; else looks again at the next deadline.
    private func check(_ context: ChannelHandlerContext) {
        timer = nil
        let now = NIODeadline.now()
        let busy = withRouter > 0 || parserInRequest
        if let started = headStarted, now >= started + limits.headerTimeout {
            if !busy {
                let response = ConnectionLimits.response(
                    "408 Request Timeout", detail: "the request head did not arrive in time")
                context.writeAndFlush(wrapOutboundOut(response)).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            } else {
                context.close(promise: nil)
            }
            return
        }
        if !busy, headStarted == nil, now >= lastActivity + limits.idleTimeout {
            context.close(promise: nil)
            return
        }
        var next = lastActivity + limits.idleTimeout
        if let started = headStarted { next = min(next, started + limits.headerTimeout) }
        scheduleCheck(context, at: busy && headStarted == nil ? now + limits.idleTimeout : next)
    }

    private func scheduleCheck(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        guard timer == nil else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: max(deadline, .now() + .milliseconds(10))) {
            let (lane, context) = loopBound.value
            lane.check(context)
        }
    }

    /// Called by ``RouterResponses`` when the parser has read a request head.
    fileprivate func parserReadHead() {
        parserInRequest = true
        headStarted = nil
    }

    /// Called by ``RouterResponses`` when the parser has read a request's end: in pass-through
    /// mode the next request may already have begun in the same bytes, so its clock starts.
    fileprivate func parserReadEnd() {
        parserInRequest = false
        if passThrough, headStarted == nil { headStarted = .now() }
    }

    private func handOn(_ context: ChannelHandlerContext, _ bytes: ByteBuffer) {
        handedOn = true
        context.fireChannelRead(wrapInboundOut(bytes))
    }

    /// The response head and body when the request is a plain stored tile, else nil.
    private func answer(
        _ head: RequestHead, in buffer: ByteBuffer, context: ChannelHandlerContext
    ) -> (ByteBuffer, ByteBuffer?)? {
        let started = DispatchTime.now().uptimeNanoseconds
        guard head.method != nil, head.keepAlive, head.contentLength == 0, !head.authorization, !head.expect,
            let (route, tile) = buffer.withUnsafeReadableBytes({ FastRoute.parse($0[head.target]) })
        else { return nil }
        if service.catalog.version != catalog.version { catalog = service.catalog.snapshot() }
        // The router's chain, stopped at the first step that is more than a lookup: anything but
        // a stored stream (an error, a clip, a transcode, an empty tile) goes to the router.
        guard let t = try? service.resolve(tile, in: catalog, strictLimits: route == .wmtsREST),
            case .stored? = try? service.answer(t, viewer: .anyone, memo: &published, quick: true)
        else { return nil }
        let key = HotTiles.Key(pyramid: ObjectIdentifier(t.pyramid), tile: t.tile)
        let ready: HotTiles.Entry
        if let hit = hot.get(key, catalogVersion: catalog.version) {
            ready = hit
            tally.hotHits += 1
        } else {
            tally.hotMisses += 1
            // A store that answers later, an unreadable shard (logged by the service) or no tile:
            // the router answers (200 after waiting, 500, 503 or 404).
            guard case .ready(.success(let stored?)) = service.readNow(t, allocator: context.channel.allocator)
            else { return nil }
            ready = HotTiles.Entry(service.response(t, stored), allocator: context.channel.allocator)
            hot.put(key, ready, catalogVersion: catalog.version)
        }
        let current =
            head.ifNoneMatch.map {
                ready.response.isCurrent(
                    ifNoneMatch: buffer.getString(at: buffer.readerIndex + $0.lowerBound, length: $0.count) ?? "")
            } ?? false
        // The head as NIO writes the router's: the tile's own headers, the length (Hummingbird
        // adds it from the body), CORS, then Hummingbird's date and server.
        var out = context.channel.allocator.buffer(capacity: ready.head.readableBytes + 128)
        if current {
            out.writeStaticString("HTTP/1.1 304 Not Modified\r\n")
            ready.response.headerFields(current: true) { out.writeField($0.canonicalName, $1) }
        } else {
            out.writeImmutableBuffer(ready.head)
        }
        if head.origin { out.writeField("Access-Control-Allow-Origin", "*") }
        out.writeField("Date", date.now())
        out.writeField("Server", serverName)
        out.writeStaticString("\r\n")
        let body = !current && head.method == .get ? ready.response.bytes : nil
        let method: HTTPMethod = head.method == .get ? .GET : .HEAD
        if logRequests {
            logger.info(
                "Request",
                metadata: [
                    "hb.request.id": .stringConvertible(RequestID()),
                    "hb.request.path": .string(
                        buffer.getString(at: buffer.readerIndex + head.target.lowerBound, length: head.target.count)
                            ?? ""),
                    "hb.request.method": .string(method.rawValue),
                ])
        }
        service.fastLaneAnswers.add(1, ordering: .relaxed)
        tally.add(
            route, method: method, status: current ? .notModified : .ok, bytes: body?.readableBytes ?? 0,
            nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
        return (out, body)
    }
}

/// Sits between NIO's HTTP parser and Hummingbird: tells the fast lane when the router has
/// finished a response, so it may answer again, and closes the connection after the response to
/// a request that did not ask to keep it (HTTP/1.0 without `keep-alive`, `Connection: close`),
/// which Hummingbird leaves open for HTTP/1.0 (the version does not reach it).
final class RouterResponses: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let lane: TileFastLane
    /// Whether each request with the router wants its connection kept, oldest first.
    private var keepAlive = CircularBuffer<Bool>()

    init(lane: TileFastLane) { self.lane = lane }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            keepAlive.append(head.isKeepAlive)
            lane.parserReadHead()
        case .end:
            lane.parserReadEnd()
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .end = unwrapOutboundIn(data) else { return context.write(data, promise: promise) }
        lane.withRouter = max(0, lane.withRouter - 1)
        guard keepAlive.popFirst() == false else { return context.write(data, promise: promise) }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.write(data, promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            promise?.completeWith(result)
            context.close(promise: nil)
        }
    }
}

/// The head of one HTTP/1.1 request as the fast lane frames it: where it ends, where its target
/// lies, and the few headers that decide whether the fast lane may answer it. Strict: anything
/// unusual is `unframed` and left to NIO's parser.
package struct RequestHead: Equatable {
    package enum Method { case get, head }
    package enum Framing: Equatable {
        /// The head is not complete yet.
        case incomplete
        /// Not a request the fast lane frames: the parser takes the rest of the connection.
        case unframed
        case request(RequestHead)
    }

    /// GET or HEAD; nil for any other method.
    package var method: Method?
    /// The request target's byte range from the start of the head.
    package var target: Range<Int>
    /// Length of the head, blank line included.
    package var length: Int
    package var contentLength = 0
    /// HTTP/1.1 without `Connection: close`.
    package var keepAlive = true
    package var authorization = false
    package var origin = false
    package var expect = false
    /// The value range of the first `If-None-Match`.
    package var ifNoneMatch: Range<Int>?

    /// Frames the head at the start of `p`, searching for its end from `from` (where an earlier
    /// search of the same bytes stopped, less three).
    package static func frame(_ p: UnsafeRawBufferPointer, from: Int = 0) -> Framing {
        // The head ends at the first CRLF CRLF; every line feed must follow a carriage return and
        // every carriage return be followed by a line feed.
        var end = -1
        var i = from
        while i < p.count {
            if p[i] == 10 {
                guard i > 0, p[i - 1] == 13 else { return .unframed }
                if i >= 3, p[i - 2] == 10 {
                    end = i + 1
                    break
                }
            } else if p[i] == 13, i + 1 < p.count, p[i + 1] != 10 {
                return .unframed
            }
            i += 1
        }
        guard end > 0 else { return .incomplete }
        guard end <= TileFastLane.maxHead else { return .unframed }
        // Request line: method SP target SP HTTP/1.x CRLF.
        guard let lineEnd = p[..<end].firstIndex(of: 13), let sp1 = p[..<lineEnd].firstIndex(of: 32),
            let sp2 = p[(sp1 + 1)..<lineEnd].firstIndex(of: 32), sp1 > 0, sp2 > sp1 + 1
        else { return .unframed }
        let method = p[..<sp1]
        // CONNECT and the HTTP/2 preface end HTTP/1 framing for the parser: so they do here.
        guard method.allSatisfy(isToken), !method.elementsEqual("CONNECT".utf8), !method.elementsEqual("PRI".utf8)
        else { return .unframed }
        guard p[(sp1 + 1)..<sp2].allSatisfy({ $0 > 32 && $0 < 127 }) else { return .unframed }
        let version = p[(sp2 + 1)..<lineEnd]
        guard version.elementsEqual("HTTP/1.1".utf8) || version.elementsEqual("HTTP/1.0".utf8) else {
            return .unframed
        }
        var head = RequestHead(
            method: method.elementsEqual("GET".utf8) ? .get : method.elementsEqual("HEAD".utf8) ? .head : nil,
            target: (sp1 + 1)..<sp2, length: end)
        var sawLength = false
        var line = lineEnd + 2
        while line < end - 2 {
            let stop = p[line..<end].firstIndex(of: 13)!
            guard let colon = p[line..<stop].firstIndex(of: 58), colon > line,
                p[line..<colon].allSatisfy(isToken)
            else { return .unframed }
            var from = colon + 1
            var to = stop
            while from < to, p[from] == 32 || p[from] == 9 { from += 1 }
            while to > from, p[to - 1] == 32 || p[to - 1] == 9 { to -= 1 }
            guard p[from..<to].allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else { return .unframed }
            let name = p[line..<colon]
            let value = p[from..<to]
            func named(_ s: StaticString) -> Bool {
                name.count == s.utf8CodeUnitCount
                    && zip(name, UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)).allSatisfy {
                        $0 | 0x20 == $1
                    }
            }
            switch name.count {
            case 14 where named("content-length"):
                // Digits, then spaces only (the parser refuses a tab there).
                var digitsEnd = stop
                while digitsEnd > from, p[digitsEnd - 1] == 32 { digitsEnd -= 1 }
                let digits = p[from..<digitsEnd]
                guard !sawLength, !digits.isEmpty, digits.count <= 12, digits.allSatisfy({ $0 >= 48 && $0 <= 57 })
                else { return .unframed }
                head.contentLength = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
                sawLength = true
            case 17 where named("transfer-encoding"), 7 where named("upgrade"):
                return .unframed
            case 10 where named("connection"), 16 where named("proxy-connection"):
                let lower = String(decoding: value, as: UTF8.self).lowercased()
                if lower.contains("upgrade") { return .unframed }
                if lower.contains("close") { head.keepAlive = false }
            case 13 where named("authorization"):
                head.authorization = true
            case 6 where named("origin"):
                head.origin = true
            case 6 where named("expect"):
                head.expect = true
            case 13 where named("if-none-match"):
                if head.ifNoneMatch == nil { head.ifNoneMatch = from..<to }
            default:
                break
            }
            line = stop + 2
        }
        if version.last == UInt8(ascii: "0") { head.keepAlive = false }
        return .request(head)
    }

    /// RFC 9110 token characters.
    private static func isToken(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }
}

/// Hummingbird's HTTP/1 channel with the tile fast lane in front of NIO's HTTP parser, so a stored
/// tile costs no more than finding the end of its request.
struct FastLaneHTTP1Channel: HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let limits: ConnectionLimits
    let fastLane: @Sendable (any EventLoop) -> TileFastLane

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            guard limits.enter() else {
                logger.warning("refused a connection: \(limits.maxConnections) connections are open (max_connections)")
                try channel.pipeline.syncOperations.addHandler(RefuseConnection())
                return try NIOAsyncChannel(
                    wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
            }
            channel.closeFuture.whenComplete { _ in limits.leave() }
            let lane = fastLane(channel.eventLoop)
            try channel.pipeline.syncOperations.addHandler(lane)
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false)
            try channel.pipeline.syncOperations.addHandler(RouterResponses(lane: lane))
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
    static func http1(
        limits: ConnectionLimits, fastLane: @escaping @Sendable (any EventLoop) -> TileFastLane
    ) -> HTTPServerBuilder {
        .init { responder in FastLaneHTTP1Channel(responder: responder, limits: limits, fastLane: fastLane) }
    }
}

/// The tile URLs the fast lane knows, named as the router names them in metrics.
package enum FastRoute: String, Sendable, CaseIterable {
    case xyz = "/tiles/{tileset}/{tms}/{z}/{x}/{file}"
    case wmtsREST = "/wmts/1.0.0/{layer}/{style}/{tms}/{z}/{row}/{file}"

    /// `/tiles/T/G/z/x/y.ext` or `/wmts/1.0.0/T/normal/G/z/row/col.ext`, with plain names and
    /// numbers only; nil for anything else (the router then decides). Works on the UTF-8 bytes:
    /// this runs for every request.
    package static func parse(_ path: String) -> (FastRoute, TileRequest)? {
        var path = path
        return path.withUTF8 { parse($0) }
    }

    /// The same on the bytes of a request target (no allocation but the names).
    package static func parse<Bytes: BidirectionalCollection<UInt8>>(_ bytes: Bytes) -> (FastRoute, TileRequest)? {
        let slash = UInt8(ascii: "/")
        guard bytes.count < 256, bytes.first == slash,
            !bytes.contains(where: { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "%") })
        else { return nil }
        return withUnsafeTemporaryAllocation(of: Bytes.Index.self, capacity: 9) {
            slashes -> (FastRoute, TileRequest)? in
            var count = 0
            for i in bytes.indices where bytes[i] == slash {
                guard count < slashes.count else { return nil }
                slashes[count] = i
                count += 1
            }
            /// The segment after the `k`-th slash.
            func part(_ k: Int) -> Bytes.SubSequence {
                bytes[bytes.index(after: slashes[k])..<(k + 1 < count ? slashes[k + 1] : bytes.endIndex)]
            }
            func equals(_ k: Int, _ word: StaticString) -> Bool {
                part(k).elementsEqual(UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount))
            }
            let route: FastRoute
            let names: (tileset: Int, grid: Int, z: Int, first: Int)
            if count == 6, equals(0, "tiles") {
                (route, names) = (.xyz, (1, 2, 3, 4))
            } else if count == 8, equals(0, "wmts"), equals(1, "1.0.0"), equals(3, "normal") {
                (route, names) = (.wmtsREST, (2, 4, 5, 6))
            } else {
                return nil
            }
            let file = part(count - 1)
            guard !part(names.tileset).isEmpty, !part(names.grid).isEmpty,
                let dot = file.lastIndex(of: UInt8(ascii: ".")),
                let encoding = TileEncoding(
                    extension: Substring(decoding: file[file.index(after: dot)...], as: UTF8.self)),
                let z = tileIndex(part(names.z)), let a = tileIndex(part(names.first)),
                let b = tileIndex(file[..<dot])
            else { return nil }
            // XYZ is z/x/y (column first), WMTS REST z/row/col.
            let (col, row) = route == .xyz ? (a, b) : (b, a)
            let tile = TileRequest(
                tileset: String(decoding: part(names.tileset), as: UTF8.self),
                grid: String(decoding: part(names.grid), as: UTF8.self), z: z, col: col, row: row,
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

    /// The index of a request's series, nil for one the fast lane never answers.
    static func seriesIndex(_ route: FastRoute, method: HTTPMethod, status: HTTPResponseStatus) -> Int? {
        guard let r = FastRoute.allCases.firstIndex(of: route), let m = methods.firstIndex(of: method),
            let s = statuses.firstIndex(of: status)
        else { return nil }
        return (r * methods.count + m) * statuses.count + s
    }

    static var seriesCount: Int { FastRoute.allCases.count * methods.count * statuses.count }

    /// Adds a loop's tally: request counts by series, then each request's duration.
    func add(requests: [Int], durations: [(series: Int, nanoseconds: Int64)]) {
        let total = requests.reduce(0, +)
        guard total > 0 else { return }
        answered.increment(by: Int64(total))
        for (i, n) in requests.enumerated() where n > 0 { series[i].counter.increment(by: Int64(n)) }
        for d in durations { series[d.series].timer.recordNanoseconds(d.nanoseconds) }
    }
}

/// What the fast lane did on one event loop since the last flush: requests by series with their
/// durations, bytes, tiles and hot-tile hits. Handed to the shared counters and histograms every
/// 256 requests and every second (``FastLaneLoops``): taking the histograms' lock per request
/// from both loops made them wait on each other, which showed in the 99th percentile.
final class FastLaneTally {
    private var requests = [Int](repeating: 0, count: FastLaneMetrics.seriesCount)
    private var durations: [(series: Int, nanoseconds: Int64)] = []
    private var bytes = 0
    var hotHits = 0
    var hotMisses = 0

    static let hotTileHits = Counter(label: "dallage_hot_tile_hits_total")
    static let hotTileMisses = Counter(label: "dallage_hot_tile_misses_total")

    /// The tile service's count of tiles served, to which hot-tile hits are added.
    private let tilesServed: Counter

    init(tilesServed: Counter) {
        self.tilesServed = tilesServed
        durations.reserveCapacity(256)
    }

    func add(_ route: FastRoute, method: HTTPMethod, status: HTTPResponseStatus, bytes: Int, nanoseconds: UInt64) {
        guard let series = FastLaneMetrics.seriesIndex(route, method: method, status: status) else { return }
        requests[series] += 1
        durations.append((series, Int64(nanoseconds)))
        self.bytes += bytes
        if durations.count >= 256 { flush() }
    }

    func flush() {
        FastLaneMetrics.shared.add(requests: requests, durations: durations)
        if bytes > 0 { Document.bytesSent.increment(by: Int64(bytes)) }
        if hotHits > 0 { Self.hotTileHits.increment(by: Int64(hotHits)) }
        if hotMisses > 0 { Self.hotTileMisses.increment(by: Int64(hotMisses)) }
        // Misses were counted by the tile service as they were read from their shards.
        if hotHits > 0 { tilesServed.increment(by: Int64(hotHits)) }
        for i in requests.indices { requests[i] = 0 }
        durations.removeAll(keepingCapacity: true)
        (bytes, hotHits, hotMisses) = (0, 0, 0)
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
