import Foundation
import GeoGrid
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Pyramid
import Synchronization
import Testing

@testable import Server
@testable import Serving

/// The fast lane as a channel handler, fed bytes in an `EmbeddedChannel` as swift-nio tests its
/// own handlers: what it writes back, what it hands on to the parser, and when. No socket, no
/// clock; the live socket tests in ``ServerTests`` stay the end-to-end check.
struct FastLaneChannelTests {
    static let inner = ServerFixture.innerTile
    static let tilePath = "/tiles/pcrs/2154_5cm/22/\(inner.col)/\(inner.row).jpg"
    /// The tile to the right of `inner`, also wholly inside the data.
    static let nextPath = "/tiles/pcrs/2154_5cm/22/\(inner.col + 1)/\(inner.row).jpg"

    static func get(_ path: String, _ fields: String = "", method: String = "GET") -> String {
        "\(method) \(path) HTTP/1.1\r\nHost: tiles.example.org\r\nUser-Agent: test\r\n\(fields)\r\n"
    }

    /// A fast lane on a tile service of its own over the fixture store (the service counts the
    /// lane's answers) or on `service`, in an active embedded channel, after `before` (closest to
    /// the socket).
    final class Lane {
        let service: TileService
        let loop: FastLaneLoop
        let lane: TileFastLane
        let channel: EmbeddedChannel

        init(before: [any ChannelHandler] = [], service: TileService? = nil, loop: FastLaneLoop? = nil) throws {
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            var configuration = ServerConfiguration()
            configuration.store = ServerFixture.shared + "/store"
            let service =
                service
                ?? TileService(
                    catalog: PyramidCatalog(store: FolderStore(configuration.store), logger: logger),
                    settings: configuration.serving, logger: logger)
            self.service = service
            self.loop = loop ?? FastLaneLoop(hot: HotTiles(capacity: 1 << 20), service: service, serverName: "dallage")
            lane = TileFastLane(
                service: service, loop: self.loop,
                limits: ConnectionLimits(maxConnections: 8, idleTimeout: .seconds(600), headerTimeout: .seconds(600)),
                logger: logger)
            channel = EmbeddedChannel(handlers: before + [lane])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080)).wait()
        }

        deinit { _ = try? channel.finish(acceptAlreadyClosed: true) }

        /// One read of these bytes.
        func send(_ text: String) throws {
            try channel.writeInbound(ByteBuffer(string: text))
        }

        /// Everything written back to the client so far.
        func written() throws -> [UInt8] {
            var out: [UInt8] = []
            while let part = try channel.readOutbound(as: IOData.self) {
                guard case .byteBuffer(let bytes) = part else {
                    Issue.record("a file region written")
                    continue
                }
                out += bytes.readableBytesView
            }
            return out
        }

        /// Everything handed on to the next handler so far, as bytes.
        func handedOn() throws -> [UInt8] {
            var out: [UInt8] = []
            while let bytes = try channel.readInbound(as: ByteBuffer.self) { out += bytes.readableBytesView }
            return out
        }

        var answered: Int { service.fastLaneAnswers }
    }

    /// One response read back: status, fields in order, body.
    struct Answer: CustomStringConvertible {
        var status: Int
        var fields: [(name: String, value: String)]
        var body: [UInt8]

        /// The value of a field, by its name in any case.
        subscript(_ name: String) -> String? { fields.first { $0.name.lowercased() == name.lowercased() }?.value }
        /// The field names in order, in lower case (NIO writes the router's standard ones so).
        var names: [String] { fields.map { $0.name.lowercased() } }
        var description: String { "\(status) \(fields.map { "\($0.name): \($0.value)" }) +\(body.count) bytes" }
    }

    /// Splits what was written into responses; `bodiless[i]` says the i-th has no body whatever
    /// its `Content-Length` (an answer to HEAD). Nil when the bytes are not whole responses.
    static func answers(_ bytes: [UInt8], bodiless: [Bool] = []) -> [Answer]? {
        var rest = bytes[...]
        var out: [Answer] = []
        while !rest.isEmpty {
            guard let end = rest.firstRange(of: Array("\r\n\r\n".utf8)) else { return nil }
            let lines = String(decoding: rest[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
            let statusLine = lines[0].split(separator: " ")
            guard statusLine.count >= 2, statusLine[0] == "HTTP/1.1", let status = Int(statusLine[1]) else {
                return nil
            }
            var answer = Answer(status: status, fields: [], body: [])
            for line in lines.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { return nil }
                answer.fields.append(
                    (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
            rest = rest[end.upperBound...]
            let noBody = status == 304 || (out.count < bodiless.count && bodiless[out.count])
            let length = noBody ? 0 : Int(answer["Content-Length"] ?? "0") ?? -1
            guard length >= 0, rest.count >= length else { return nil }
            answer.body = Array(rest.prefix(length))
            rest = rest.dropFirst(length)
            out.append(answer)
        }
        return out
    }

    /// The response bytes with the `Date` value blanked, to compare answers made at different times.
    static func withoutDate(_ bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        var from = bytes.startIndex
        while let r = bytes[from...].firstRange(of: Array("\r\nDate: ".utf8)) {
            for i in r.upperBound..<min(r.upperBound + 29, bytes.count) { bytes[i] = UInt8(ascii: "x") }
            from = r.upperBound
        }
        return bytes
    }

    /// The stored bytes and validator of a tile of the fixture, read through the tile service.
    static func stored(_ service: TileService, col: Int = inner.col) throws -> TileResponse {
        let request = TileRequest(
            tileset: "pcrs", grid: "2154_5cm", z: inner.z, col: col, row: inner.row, encoding: .jpeg)
        let t = try service.resolve(request, in: service.catalog.snapshot(), strictLimits: false)
        guard case .ready(.success(let bytes?)) = service.readNow(t, allocator: ByteBufferAllocator()) else {
            throw ServingError(.notFound, "no stored tile at \(request)")
        }
        return service.response(t, bytes)
    }

    static func isCurrentDate(_ text: String?) -> Bool {
        let format = DateFormatter()
        format.locale = Locale(identifier: "en_US_POSIX")
        format.timeZone = TimeZone(identifier: "GMT")
        format.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        guard let text, text.utf8.count == 29, let date = format.date(from: text) else { return false }
        return abs(date.timeIntervalSinceNow) < 5
    }

    @Test func aStoredTileInOneReadIsAnsweredWithItsBytesAndTheRoutersHeaders() throws {
        let l = try Lane()
        let tile = try Self.stored(l.service)
        for origin in [false, true] {
            try l.send(Self.get(Self.tilePath, origin ? "Origin: http://example.org\r\n" : ""))
            let answers = try #require(Self.answers(try l.written()))
            #expect(try l.handedOn().isEmpty)
            #expect(answers.count == 1)
            let a = try #require(answers.first)
            #expect(a.status == 200)
            // The router's fields, in another order: the start made once a second (date, server,
            // CORS), then the tile's ready fields and its length (NIO writes the router's with the
            // date and the server last; fields of different names may come in any order).
            let names =
                ["date", "server"] + (origin ? ["access-control-allow-origin"] : [])
                + ["etag", "cache-control", "content-type", "content-length"]
            #expect(a.names == names)
            #expect(a["ETag"] == tile.etag)
            #expect(a["Cache-Control"] == "public, max-age=3600")
            #expect(a["Content-Type"] == "image/jpeg")
            #expect(a["Content-Length"] == String(tile.bytes.readableBytes))
            #expect(a["Access-Control-Allow-Origin"] == (origin ? "*" : nil))
            #expect(Self.isCurrentDate(a["Date"]), "\(a)")
            #expect(a["Server"] == "dallage")
            #expect(a.body == Array(tile.bytes.readableBytesView))
        }
        #expect(l.answered == 2)
    }

    @Test func aRequestCutInTwoReadsAnywhereGetsTheSameAnswer() throws {
        let request = Array(Self.get(Self.tilePath, "Accept: image/*\r\n").utf8)
        let whole = try Lane()
        try whole.channel.writeInbound(ByteBuffer(bytes: request))
        let expected = Self.withoutDate(try whole.written())
        #expect(Self.answers(expected)?.first?.status == 200)
        for cut in 1..<request.count {
            // Another connection of the same loop and server: a hit.
            let l = try Lane(service: whole.service, loop: whole.loop)
            try l.channel.writeInbound(ByteBuffer(bytes: request[..<cut]))
            #expect(try l.written().isEmpty, "cut at \(cut)")
            try l.channel.writeInbound(ByteBuffer(bytes: request[cut...]))
            #expect(Self.withoutDate(try l.written()) == expected, "cut at \(cut)")
            #expect(try l.handedOn().isEmpty, "cut at \(cut)")
        }
        #expect(whole.loop.tally.hotHits == request.count - 1)
    }

    /// The hot tiles are the server's: a tile answered on one event loop is ready on the others.
    @Test func aTileAnsweredOnOneLoopIsHotOnAnother() throws {
        let first = try Lane()
        try first.send(Self.get(Self.tilePath))
        let answer = Self.withoutDate(try first.written())
        #expect(first.loop.tally.hotMisses == 1)
        let other = try Lane(
            service: first.service,
            loop: FastLaneLoop(hot: first.loop.hot, service: first.service, serverName: "dallage"))
        try other.send(Self.get(Self.tilePath))
        #expect(Self.withoutDate(try other.written()) == answer)
        #expect(other.loop.tally.hotHits == 1 && other.loop.tally.hotMisses == 0)
    }

    /// `hot_tile_cache_bytes` is memory: the kept tiles' buffers as allocated (NIO rounds each up
    /// to a power of two, a 20 KB tile takes 32 KB) stay within it, and the cache is used.
    @Test func hotTilesHoldNoMoreMemoryThanTheirBudget() {
        let budget = 1 << 20
        let hot = HotTiles(capacity: budget)
        let allocator = ByteBufferAllocator()
        let keys = (0..<400).map { HotTiles.Key(shard: 1, tile: TileCoordinate(z: 18, col: $0, row: 0)) }
        for (i, key) in keys.enumerated() {
            let tile = TileResponse(
                bytes: ByteBuffer(repeating: 7, count: 20_000 + i), mimeType: "image/jpeg", etag: "\"\(i)\"",
                cacheControl: "public, max-age=3600")
            hot.put(key, HotTiles.Entry(tile, allocator: allocator))
        }
        let held = keys.compactMap { key in
            hot.read(key) { $0.answer.capacity + $0.notModifiedFields.capacity + HotTiles.Entry.objectBytes }
        }
        #expect(held.reduce(0, +) == hot.bytes)
        #expect(hot.bytes <= budget)
        #expect(held.allSatisfy { $0 > 32_768 })
        // Every stripe keeps what fits in its part, the latest tiles.
        #expect(held.count >= 16)
        #expect(hot.read(keys.last!) { _ in true } == true)
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        let l = try Lane()
        let (a, b) = (try Self.stored(l.service), try Self.stored(l.service, col: Self.inner.col + 1))
        // The third is the first again, answered from the hot tiles this time.
        try l.send(Self.get(Self.tilePath) + Self.get(Self.nextPath) + Self.get(Self.tilePath))
        let answers = try #require(Self.answers(try l.written()))
        #expect(answers.map(\.status) == [200, 200, 200])
        #expect(answers.map(\.body) == [a, b, a].map { Array($0.bytes.readableBytesView) })
        #expect(answers.map { $0["ETag"] } == [a.etag, b.etag, a.etag])
        #expect(answers.allSatisfy { Self.isCurrentDate($0["Date"]) })
        #expect(try l.handedOn().isEmpty)
        #expect(l.answered == 3)
    }

    @Test func theTilesValidatorGetsA304WithoutBody() throws {
        let l = try Lane()
        let tile = try Self.stored(l.service)
        for (match, origin) in [(tile.etag, false), ("\"other\", \(tile.etag)", true), ("*", false)] {
            let request = Self.get(
                Self.tilePath, "If-None-Match: \(match)\r\n" + (origin ? "Origin: http://example.org\r\n" : ""))
            // The same request twice: the second from the hot tiles.
            try l.send(request + request)
            let written = try l.written()
            let answers = try #require(Self.answers(written))
            #expect(answers.count == 2)
            for a in answers {
                #expect(a.status == 304)
                #expect(
                    a.names == ["date", "server"] + (origin ? ["access-control-allow-origin"] : [])
                        + ["etag", "cache-control"])
                #expect(a["ETag"] == tile.etag)
                #expect(a.body.isEmpty)
            }
            #expect(written.suffix(4) == Array("\r\n\r\n".utf8))
        }
        // Another validator: the tile.
        try l.send(Self.get(Self.tilePath, "If-None-Match: \"other\"\r\n"))
        #expect(Self.answers(try l.written())?.map(\.body) == [Array(tile.bytes.readableBytesView)])
        #expect(try l.handedOn().isEmpty)
    }

    @Test func headIsAnsweredWithoutBody() throws {
        let l = try Lane()
        let tile = try Self.stored(l.service)
        // HEAD then GET in one read: the HEAD answer ends at its head, the GET's follows.
        try l.send(Self.get(Self.tilePath, method: "HEAD") + Self.get(Self.tilePath))
        let answers = try #require(Self.answers(try l.written(), bodiless: [true]))
        #expect(answers.map(\.status) == [200, 200])
        #expect(answers[0]["Content-Length"] == String(tile.bytes.readableBytes))
        #expect(answers[0].body.isEmpty)
        #expect(answers[0].names == answers[1].names)
        #expect(answers[1].body == Array(tile.bytes.readableBytesView))
    }

    /// Requests for the router, of every kind the lane must recognise.
    static let forTheRouter = [
        get(tilePath.replacingOccurrences(of: ".jpg", with: ".jpg?f=1")),
        get(tilePath, "Authorization: Bearer secret\r\n"),
        "POST \(tilePath) HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
        get(tilePath.replacingOccurrences(of: "/pcrs/", with: "/unknown/")),
        get(tilePath.replacingOccurrences(of: ".jpg", with: ".png")),
        get(tilePath, "Expect: 100-continue\r\n"),
        get("/tiles/pcrs/2154_5cm/22/\(inner.col)/\(inner.row - 500).jpg"),
        get("/healthz"),
    ]

    /// Requests the lane must leave to the router, each followed by a tile request: the lane
    /// writes nothing, and the next handler gets every byte as it came.
    @Test(arguments: FastLaneChannelTests.forTheRouter)
    func requestsForTheRouterArePassedOnUnchanged(request: String) throws {
        let l = try Lane()
        let text = request + Self.get(Self.tilePath)
        try l.send(text)
        #expect(try l.written().isEmpty)
        #expect(String(decoding: try l.handedOn(), as: UTF8.self) == text)
        #expect(l.answered == 0)
    }

    /// A request after one handed on goes the same way, so answers keep their order; once the
    /// router has finished its responses, the lane answers again.
    @Test func requestsFollowOneHandedOnUntilTheRoutersResponseEnds() throws {
        let l = try Lane()
        try l.channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false)
        try l.channel.pipeline.syncOperations.addHandler(RouterResponses(lane: l.lane))
        func heard() throws -> [String] {
            var parts: [String] = []
            while let part = try l.channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let head): parts.append("\(head.method) \(head.uri)")
                case .body: parts.append("body")
                case .end: parts.append("end")
                }
            }
            return parts
        }
        func routerAnswers() throws {
            var head = HTTPResponseHead(version: .http1_1, status: .ok)
            head.headers.add(name: "Content-Length", value: "2")
            try l.channel.writeOutbound(HTTPServerResponsePart.head(head))
            try l.channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "ok"))))
            try l.channel.writeOutbound(HTTPServerResponsePart.end(nil))
        }
        func routersAnswer() throws -> Bool {
            String(decoding: try l.written(), as: UTF8.self) == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }

        try l.send(Self.get("/healthz") + Self.get(Self.tilePath))
        #expect(try l.written().isEmpty)
        #expect(try heard() == ["GET /healthz", "end", "GET \(Self.tilePath)", "end"])
        // The router answers /healthz; the tile is still with it, so the next one follows.
        try routerAnswers()
        #expect(try routersAnswer())
        try l.send(Self.get(Self.nextPath))
        #expect(try l.written().isEmpty)
        #expect(try heard() == ["GET \(Self.nextPath)", "end"])
        try routerAnswers()
        #expect(try routersAnswer())
        try routerAnswers()
        #expect(try routersAnswer())
        // Nothing with the router now: the lane answers.
        try l.send(Self.get(Self.tilePath))
        #expect(try heard().isEmpty)
        #expect(Self.answers(try l.written())?.map(\.status) == [200])
        #expect(l.answered == 1)
    }

    /// Every head starts with the status line, the date and the server (CORS after when asked),
    /// made anew each second: a response still waiting for the socket keeps the date it was made
    /// with.
    @Test func headStartsAreMadeOnceASecond() {
        var starts = HeadStarts(serverName: "dallage")
        let allocator = ByteBufferAllocator()
        starts.update(1_700_000_000, allocator: allocator)
        let pending = starts.start(notModified: false, cors: false)
        let fields = "Date: Tue, 14 Nov 2023 22:13:20 GMT\r\nServer: dallage\r\n"
        #expect(String(buffer: pending) == "HTTP/1.1 200 OK\r\n" + fields)
        #expect(
            String(buffer: starts.start(notModified: false, cors: true))
                == "HTTP/1.1 200 OK\r\n" + fields + "Access-Control-Allow-Origin: *\r\n")
        #expect(
            String(buffer: starts.start(notModified: true, cors: false)) == "HTTP/1.1 304 Not Modified\r\n" + fields)
        #expect(
            String(buffer: starts.start(notModified: true, cors: true))
                == "HTTP/1.1 304 Not Modified\r\n" + fields + "Access-Control-Allow-Origin: *\r\n")
        starts.update(1_700_000_001, allocator: allocator)
        #expect(
            String(buffer: starts.start(notModified: false, cors: false))
                == "HTTP/1.1 200 OK\r\nDate: Tue, 14 Nov 2023 22:13:21 GMT\r\nServer: dallage\r\n")
        #expect(String(buffer: pending) == "HTTP/1.1 200 OK\r\n" + fields)
    }

    /// Counts the reads asked of the socket.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = Any
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    @Test func whileTheSocketIsFullRequestsWaitAndReadsArePutOff() throws {
        let counter = ReadCounter()
        let l = try Lane(before: [counter])
        let tile = try Self.stored(l.service)
        // As a socket channel does, the change is announced (the lane keeps writability from
        // the announcements rather than asking the channel at each request).
        l.channel.isWritable = false
        l.channel.pipeline.fireChannelWritabilityChanged()
        try l.send(Self.get(Self.tilePath))
        try l.send(Self.get(Self.nextPath))
        #expect(try l.written().isEmpty)
        #expect(try l.handedOn().isEmpty)
        let reads = counter.reads
        l.channel.read()
        #expect(counter.reads == reads)

        l.channel.isWritable = true
        l.channel.pipeline.fireChannelWritabilityChanged()
        let answers = try #require(Self.answers(try l.written()))
        #expect(answers.map(\.status) == [200, 200])
        #expect(answers.first?.body == Array(tile.bytes.readableBytesView))
        #expect(counter.reads == reads + 1)
        #expect(try l.handedOn().isEmpty)
    }
}
