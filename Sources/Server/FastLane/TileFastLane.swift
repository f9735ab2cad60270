import Foundation
import GeoGrid
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
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
    /// This event loop's state, with the start of the heads its connections write.
    private let perLoop: FastLaneLoop
    /// Ready responses of the tiles answered lately, shared by the event loops.
    private let hot: HotTiles
    private let answers: LaneCount
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
    /// Requests the parser read whose response has not ended yet: a connection waiting for a long
    /// answer (a WMS map, an extract) is busy, not idle, in pass-through mode too.
    fileprivate var parserAnswersPending = 0
    private var timer: Scheduled<Void>?
    /// The channel's allocator, and whether its socket takes more (kept from the channel's
    /// writability events: asking the channel is a reference on it each time).
    private var allocator = ByteBufferAllocator()
    private var writable = true

    init(service: TileService, loop: FastLaneLoop, limits: ConnectionLimits, logger: Logger) {
        self.service = service
        self.limits = limits
        hot = loop.hot
        tally = loop.tally
        answers = loop.answers
        perLoop = loop
        self.logger = logger
        logRequests = logger.logLevel <= .info
    }

    func handlerAdded(context: ChannelHandlerContext) {
        allocator = context.channel.allocator
        writable = context.channel.isWritable
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
        writable = context.channel.isWritable
        if paused, writable {
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
        context.writeAndFlush(wrapOutboundOut(allocator.buffer(capacity: 0)), promise: written)
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
                if withRouter == 0, !writable {
                    paused = true
                    break
                }
                if withRouter == 0, let (start, rest) = answer(head, in: buffer, context: context) {
                    buffer.moveReaderIndex(forwardBy: head.length)
                    // Two ready buffers, nothing copied: NIO hands both to the socket in one writev.
                    context.write(wrapOutboundOut(start), promise: nil)
                    context.write(wrapOutboundOut(rest), promise: nil)
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
        if answered {
            context.flush()
            // The next read asked for here, straight to the socket: when nothing is with the
            // router no handler above has a reason to hold it back, and the channel's own request
            // for it (auto-read, after this read completes) would go through every one of them
            // (4 % of the server's time under `perf`, 20 KB tiles). Reads are still put off while
            // the socket is full.
            if !passThrough, !paused, withRouter == 0, !parserInRequest {
                readPutOff = false
                context.read()
            }
        }
    }

    /// Closes the connection when a request head has taken longer than the header timeout (with
    /// a 408 when nothing else is being answered), or when nothing has been under way for the idle
    /// timeout; else looks again at the next deadline.
    private func check(_ context: ChannelHandlerContext) {
        timer = nil
        let now = NIODeadline.now()
        let busy = withRouter > 0 || parserInRequest || parserAnswersPending > 0
        if let started = headStarted, now >= started + limits.headerTimeout {
            logger.notice(
                "closing a connection: a request head took longer than the header timeout",
                metadata: ["busy": "\(busy)", "remote": "\(context.remoteAddress?.description ?? "?")"])
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
            logger.debug(
                "closing an idle connection", metadata: ["remote": "\(context.remoteAddress?.description ?? "?")"])
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
        parserAnswersPending += 1
        headStarted = nil
    }

    /// Called by ``RouterResponses`` when the router's response to a request has ended: the
    /// idle clock starts again from the answer, not from the request.
    fileprivate func routerAnswered() {
        withRouter = max(0, withRouter - 1)
        parserAnswersPending = max(0, parserAnswersPending - 1)
        lastActivity = .now()
    }

    /// Called by ``RouterResponses`` when the parser has read a request's end. The next request's
    /// clock starts with its first byte read after this (``channelRead``): a keep-alive connection
    /// left idle after its answer is idle, not slow, and waits for the idle timeout. (Bytes of a
    /// next head that came in the same read as this end are bounded by the idle timeout: the
    /// parser's buffer cannot be seen from here.)
    fileprivate func parserReadEnd() {
        parserInRequest = false
    }

    private func handOn(_ context: ChannelHandlerContext, _ bytes: ByteBuffer) {
        handedOn = true
        context.fireChannelRead(wrapInboundOut(bytes))
    }

    /// The response when the request is a plain stored tile, else nil: the start of its head
    /// (``HeadStarts``), then the rest of the head and the body.
    private func answer(
        _ head: RequestHead, in buffer: ByteBuffer, context: ChannelHandlerContext
    ) -> (start: ByteBuffer, rest: ByteBuffer)? {
        let started = DispatchTime.now().uptimeNanoseconds
        guard head.method != nil, head.keepAlive, head.contentLength == 0, !head.authorization, !head.expect,
            let (route, tile) = buffer.withUnsafeReadableBytes({
                FastRoute.parse(UnsafeRawBufferPointer(rebasing: $0[head.target]))
            })
        else { return nil }
        if service.catalog.version != catalog.version { catalog = service.catalog.snapshot() }
        // The router's chain, stopped at the first step that is more than a lookup: anything but
        // a stored stream (an error, a clip, a transcode, an empty tile) goes to the router.
        // The stored stream may be another pyramid's than the one resolved (a layer's stacked view
        // answers with the vintage that covers the tile).
        guard let resolved = try? service.resolve(tile, in: catalog, strictLimits: route == .wmtsREST),
            case .stored(let t)? = try? service.answer(resolved, viewer: .anyone, memo: &published, quick: true)
        else { return nil }
        guard let shard = t.pyramid.contentKey(of: t.tile) else { return nil }
        let key = HotTiles.Key(shard: shard, tile: t.tile)
        /// What follows the start for `ready`, the bytes it holds, and whether the client's copy
        /// is current (a 304).
        func parts(_ ready: HotTiles.Entry) -> (rest: ByteBuffer, bytes: Int, current: Bool) {
            let current =
                head.ifNoneMatch.map {
                    ready.response.isCurrent(
                        ifNoneMatch: buffer.getString(at: buffer.readerIndex + $0.lowerBound, length: $0.count) ?? "")
                } ?? false
            if current { return (ready.notModifiedFields, 0, true) }
            if head.method == .get { return (ready.answer, ready.response.bytes.readableBytes, false) }
            return (ready.fields, 0, false)
        }
        let rest: ByteBuffer
        let bytes: Int
        let current: Bool
        if let hit = hot.read(key, parts) {
            (rest, bytes, current) = hit
            tally.hotHits += 1
        } else {
            tally.hotMisses += 1
            // A store that answers later, an unreadable shard (logged by the service) or no tile:
            // the router answers (200 after waiting, 500, 503 or 404).
            guard case .ready(.success(let stored?)) = service.readNow(t, allocator: allocator) else { return nil }
            let ready = HotTiles.Entry(service.response(t, stored), allocator: allocator)
            hot.put(key, ready)
            (rest, bytes, current) = parts(ready)
        }
        // The head holds the fields NIO writes for the router's: the tile's own, the length
        // (Hummingbird adds it from the body), CORS, Hummingbird's date and server.
        perLoop.starts.update(allocator: allocator)
        let start = perLoop.starts.start(notModified: current, cors: head.origin)
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
        answers.value.add(1, ordering: .relaxed)
        tally.add(
            route, method: method, status: current ? .notModified : .ok, bytes: bytes,
            nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
        return (start, rest)
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
        lane.routerAnswered()
        guard keepAlive.popFirst() == false else { return context.write(data, promise: promise) }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.write(data, promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            promise?.completeWith(result)
            context.close(promise: nil)
        }
    }
}
