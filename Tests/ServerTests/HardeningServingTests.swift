import Foundation
import GeoGrid
import Hummingbird
import HummingbirdTesting
import Logging
import Pyramid
import Server
import Synchronization
import Testing

@testable import Serving

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// Issue 11's reproducers on the serving side: requests and files that used to kill the server or
/// get a wrong answer, and connections that used to be held forever.
@Suite(.serialized)
struct HardeningServingTests {
    let store = ServerFixture.shared + "/store"

    static func wms(_ crs: String, _ bbox: String, layers: String = "pcrs") -> String {
        "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=\(layers)&STYLES=&CRS=\(crs)&BBOX=\(bbox)"
            + "&WIDTH=256&HEIGHT=256&FORMAT=image/png"
    }

    /// A WMS or OWS exception report: it parses as XML, and gives its code and locator.
    static func exception(_ body: ByteBuffer) -> (parses: Bool, text: String) {
        let data = Data(buffer: body)
        return (XMLParser(data: data).parse(), String(decoding: data, as: UTF8.self))
    }

    // Items 1 and 14: a BBOX of ±1e30 trapped a Double → Int conversion and killed the process;
    // BBOXes a CRS cannot carry answered 500.
    @Test(arguments: [
        ("EPSG:2154", "-1e30,-1e30,1e30,1e30"),
        ("EPSG:3857", "-1e30,-1e30,1e30,1e30"),
        ("EPSG:3949", "-1e30,-1e30,1e30,1e30"),
        ("EPSG:4326", "-1000,-1000,1000,1000"),
        ("CRS:84", "-181,0,0,1"),
    ])
    func wmsBBoxBeyondItsCRSIsAnInvalidParameter(crs: String, bbox: String) async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            try await client.execute(uri: Self.wms(crs, bbox), method: .get) { r in
                #expect(r.status == .badRequest, "\(crs) \(bbox)")
                let (parses, text) = Self.exception(r.body)
                #expect(parses)
                #expect(text.contains("code=\"InvalidParameterValue\"") && text.contains("locator=\"bbox\""), "\(text)")
            }
            // The server is still there, and a huge but representable box still draws.
            try await client.execute(uri: Self.wms("EPSG:2154", "-1e8,-1e8,1e8,1e8"), method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.headers[.contentType] == "image/png")
            }
        }
    }

    // The whole world in each CRS a GIS client may ask for draws (mostly transparent), even where
    // a projection cannot place every pixel (Lambert-93 at the south pole).
    @Test(arguments: [
        ("EPSG:4326", "-90,-180,90,180"), ("CRS:84", "-180,-90,180,90"),
        ("EPSG:3857", "-20037508,-20037508,20037508,20037508"), ("EPSG:3949", "-1e8,-1e8,1e8,1e8"),
        // Found by the fuzzer: 2 million times wider than high, source positions past 2^32 pixels.
        ("EPSG:2154", "704000,7059950,99999999,7060000"),
    ])
    func wmsWholeWorldDraws(crs: String, bbox: String) async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            try await client.execute(uri: Self.wms(crs, bbox), method: .get) { r in
                #expect(r.status == .ok, "\(crs) \(String(buffer: r.body).prefix(400))")
                #expect(r.headers[.contentType] == "image/png")
            }
        }
    }

    @Test func tileRangeOfAHugeOrNaNBoxIsClampedNotTrapped() throws {
        let tms = try TileMatrixSet.decode(
            Data(contentsOf: URL(fileURLWithPath: ServerFixture.root + "/config/tms/2154_5cm.json")))
        let all = try #require(
            tms.tiles(covering: BoundingBox(minX: -1e30, minY: -1e30, maxX: 1e30, maxY: 1e30), z: 3))
        #expect(all.colCount == tms.matrix(3)?.matrixWidth && all.rowCount == tms.matrix(3)?.matrixHeight)
        #expect(tms.tiles(covering: BoundingBox(minX: .nan, minY: 0, maxX: .nan, maxY: 1), z: 3) == nil)
        #expect(Int(bounded: 1e300) == 9_007_199_254_740_992 && Int(bounded: -.infinity) < 0)
        #expect(Int(bounded: .nan) == 0 && Int(bounded: 2.5, .down) == 2)
    }

    // Item 8: LAYERS=demo,demo,… ×3000 cost 7 s of CPU for one 256×256 image.
    @Test func wmsLayerCountIsLimitedAndAdvertised() async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            let many = Array(repeating: "pcrs", count: 3000).joined(separator: ",")
            try await client.execute(
                uri: Self.wms("EPSG:2154", "704000,7059960,704040,7060000", layers: many), method: .get
            ) {
                r in
                #expect(r.status == .badRequest)
                let (parses, text) = Self.exception(r.body)
                #expect(parses && text.contains("locator=\"layers\"") && text.contains("16"))
            }
            let limit = ServerConfiguration.defaultWMSMaxLayers
            let most = Array(repeating: "pcrs", count: limit).joined(separator: ",")
            try await client.execute(
                uri: Self.wms("EPSG:2154", "704000,7059960,704040,7060000", layers: most), method: .get
            ) {
                r in
                #expect(r.status == .ok)
            }
            try await client.execute(uri: "/wms?SERVICE=WMS&REQUEST=GetCapabilities", method: .get) { r in
                #expect(String(buffer: r.body).contains("<LayerLimit>\(limit)</LayerLimit>"))
            }
        }
    }

    // Item 19: control characters in echoed input made the XML unparsable; long input came back whole.
    @Test(arguments: [
        "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=pcrs&STYLES=&CRS=%00&BBOX=0,0,1,1&WIDTH=1&HEIGHT=1&FORMAT=image/png",
        "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=%01pcrs&STYLE=normal&FORMAT=image/jpeg&TILEMATRIXSET=PM&TILEMATRIX=1&TILEROW=0&TILECOL=0",
        "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=\(String(repeating: "a", count: 70_000))&STYLE=normal&FORMAT=image/jpeg&TILEMATRIXSET=PM&TILEMATRIX=1&TILEROW=0&TILECOL=0",
    ])
    func echoedInputIsEscapedAndShort(uri: String) async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            try await client.execute(uri: uri, method: .get) { r in
                #expect(r.status == .badRequest)
                let (parses, text) = Self.exception(r.body)
                #expect(parses, "\(text.prefix(300))")
                #expect(r.body.readableBytes < 2048)
            }
        }
    }

    // Item 20: write methods on tile routes answered 404; the CORS preflight left out PUT and
    // PATCH; tile numbers with leading zeros gave a second URL for one tile.
    @Test func readOnlyRoutesAnswer405AndPreflightListsEveryMethod() async throws {
        let t = ServerFixture.innerTile
        try await ServerFixture.app(store: store).test(.live) { client in
            for uri in [
                "/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row).jpg",
                "/wmts/1.0.0/pcrs/normal/2154_5cm/22/\(t.row)/\(t.col).jpg",
                "/wms", "/tiles/pcrs/PM/tilejson.json",
            ] {
                for method in [HTTPRequest.Method.put, .post, .delete] {
                    try await client.execute(uri: uri, method: method) { r in
                        #expect(r.status == .methodNotAllowed, "\(method) \(uri)")
                        #expect(r.headers[.allow] == "GET, HEAD, OPTIONS")
                    }
                }
            }
            try await client.execute(
                uri: "/api/projects/1", method: .options,
                headers: [.origin: "http://map.example", .accessControlRequestMethod: "PATCH"]
            ) { r in
                let methods = r.headers[.accessControlAllowMethods] ?? ""
                #expect(methods.contains("PATCH") && methods.contains("PUT"), "\(methods)")
            }
            for uri in [
                "/tiles/pcrs/2154_5cm/022/\(t.col)/\(t.row).jpg", "/tiles/pcrs/2154_5cm/22/0\(t.col)/\(t.row).jpg",
                "/wmts/1.0.0/pcrs/normal/2154_5cm/22/0\(t.row)/\(t.col).jpg",
            ] {
                try await client.execute(uri: uri, method: .get) { r in #expect(r.status == .badRequest, "\(uri)") }
            }
            try await client.execute(uri: "/tiles/pcrs/PM/0/0/0.jpg", method: .get) { r in
                #expect(r.status != .badRequest)
            }
        }
    }

    // Item 3: a shard truncated on disk after it was opened killed the server with SIGBUS on the
    // next tile past the new end. Now that tile answers 500 (logged once for the shard), the
    // rest keeps working, and a shard repaired on disk serves again without a new pyramid.json.
    @Test func shardTruncatedUnderTheServerFailsItsTilesOnlyAndRecovers() async throws {
        let dir = try ServerFixture.copy()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pyramid = dir + "/store/pcrs/2154_5cm"
        let manifest = try PyramidManifest.load(directory: pyramid)
        let shard = try #require(manifest.shards.first { $0.z == 15 })
        let path = pyramid + "/" + shard.path
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        // The z22 tiles of the shard, by where their bytes lie.
        let reader = try ShardReader(path: path)
        var placed: [(offset: UInt64, tile: TileCoordinate)] = []
        let image = reader.images[0]
        for row in 0..<(image.height / 256) {
            for col in 0..<image.tilesAcross {
                if let r = try reader.tileRange(overview: 0, col: col, row: row) {
                    placed.append(
                        (r.offset, TileCoordinate(z: 22, col: (shard.col << 7) + col, row: (shard.row << 7) + row)))
                }
            }
        }
        placed.sort { $0.offset < $1.offset }
        let (first, last) = (placed[0].tile, placed[placed.count - 1])
        let others = placed.dropLast().suffix(2).map(\.tile)
        let stored = try #require(try PyramidReader(directory: pyramid).tileData(last.tile))

        let log = LogCapture()
        var c = ServerConfiguration()
        c.store = dir + "/store"
        c.database = dir + "/dallage.sqlite"
        c.tmsDirectory = ServerFixture.root + "/config/tms"
        try await buildApplication(configuration: c, logger: log.logger).test(.live) { client in
            func get(_ t: TileCoordinate) async throws -> (HTTPResponse.Status, ByteBuffer) {
                try await client.execute(uri: "/tiles/pcrs/2154_5cm/\(t.z)/\(t.col)/\(t.row).jpg", method: .get) {
                    ($0.status, $0.body)
                }
            }
            #expect(try await get(first).0 == .ok)  // the shard is open now
            #expect(truncate(path, off_t(last.offset)) == 0)
            for _ in 0..<3 { #expect(try await get(last.tile).0 == .internalServerError) }
            for t in others { #expect(try await get(t).0 == .internalServerError) }
            #expect(log.count(containing: "unreadable shard") == 1)
            // Other shards, and the server, are unaffected.
            let above = TileCoordinate(z: 14, col: shard.col >> 1, row: shard.row >> 1)
            let aboveStatus = try await get(above).0
            #expect(aboveStatus == .ok, "\(above) \(aboveStatus)")
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            // Repaired as people do (a copy renamed over it): served again, same bytes, no new manifest.
            try original.write(to: URL(fileURLWithPath: path + ".repair"))
            #expect(rename(path + ".repair", path) == 0)
            let (status, body) = try await get(last.tile)
            #expect(status == .ok)
            #expect(Array(buffer: body) == stored)
        }
    }

    // Item 9: idle or half-sent connections were never closed; 450 of them starved everybody.
    @Test func connectionsAreCappedAndSlowOrIdleOnesClosed() async throws {
        let app = try ServerFixture.app(store: store) {
            $0.maxConnections = 6
            $0.headerTimeoutSeconds = 1
            $0.idleTimeoutSeconds = 2
        }
        try await app.test(.live) { client in
            let script = #"""
                import socket, sys, time
                port = int(sys.argv[1])
                def connect():
                    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(20); return s
                def until_closed(s):
                    # Everything the server sends until it closes, and how long that took.
                    start, data = time.time(), b""
                    while True:
                        try:
                            chunk = s.recv(65536)
                        except ConnectionResetError:
                            break
                        if not chunk: break
                        data += chunk
                    return data, time.time() - start
                out = []
                def trickled(s):
                    # A header line each time the server has said nothing for 0.4 s (a slowloris),
                    # until it answers and closes.
                    start, data = time.time(), b""
                    s.settimeout(0.4)
                    while time.time() - start < 20:
                        try:
                            chunk = s.recv(65536)
                            if not chunk: break
                            data += chunk
                        except socket.timeout:
                            try:
                                s.sendall(b"X-Slow: 1\r\n")
                            except OSError:
                                break
                        except ConnectionResetError:
                            break
                    return data, time.time() - start
                # A half-sent head, trickled: 408 then closed, though bytes keep coming.
                s = connect()
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                data, took = trickled(s)
                out.append(("slow", data.split(b"\r\n")[0].decode(), took < 15))
                # The same in pass-through mode (HTTP/1.0 goes to NIO's parser).
                s = connect()
                s.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n")
                data, took = until_closed(s)
                out.append(("slow-1.0", data.split(b"\r\n")[0].decode(), took < 15))
                # An idle connection after a request: closed by the server.
                s = connect()
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                data, took = until_closed(s)
                out.append(("idle", data.split(b"\r\n")[0].decode(), took < 15))
                # A keep-alive connection idle after a request the parser framed (HTTP/1.0 sends the
                # connection there), longer than the header timeout but not the idle one: still
                # open, its next request answered, no 408.
                s = connect()
                s.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
                first = b""
                while b"\r\n\r\n" not in first:
                    first += s.recv(65536)
                head, _, body = first.partition(b"\r\n\r\n")
                length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
                while len(body) < length:
                    body += s.recv(65536)
                time.sleep(1.5)
                s.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
                data, _ = until_closed(s)
                out.append(("kept", data.split(b"\r\n")[0].decode(), b"408" in data))
                # Six connections fill the cap (each answered once, so the server has counted it,
                # then left idle): the seventh is refused with a 503.
                held = [connect() for _ in range(6)]
                for h in held:
                    h.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += h.recv(65536)
                s = connect()
                data, _ = until_closed(s)
                out.append(("over", data.split(b"\r\n")[0].decode()))
                # Once they are closed by the idle timeout, the server takes connections again.
                for h in held: until_closed(h)
                s = connect()
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data, _ = until_closed(s)
                out.append(("after", data.split(b"\r\n")[0].decode()))
                print(repr(out))
                """#
            let (code, out) = try await ServerFixture.run(
                "/usr/bin/python3", ["-c", script, String(try #require(client.port))])
            #expect(code == 0, "\(out)")
            #expect(out.contains("('slow', 'HTTP/1.1 408 Request Timeout', True)"), "\(out)")
            #expect(out.contains("('slow-1.0', 'HTTP/1.1 408 Request Timeout', True)"), "\(out)")
            #expect(out.contains("('idle', 'HTTP/1.1 200 OK', True)"), "\(out)")
            #expect(out.contains("('kept', 'HTTP/1.1 200 OK', False)"), "\(out)")
            #expect(out.contains("('over', 'HTTP/1.1 503 Service Unavailable')"), "\(out)")
            #expect(out.contains("('after', 'HTTP/1.1 200 OK')"), "\(out)")
        }
    }
}

/// Keeps what a logger was told, to check what was logged, how often, and with which metadata
/// keys (the logger's own included: Hummingbird sets the request id there).
final class LogCapture: Sendable {
    struct Event: Sendable {
        var message: String
        var metadata: [String: String]
    }
    private let list = Mutex<[Event]>([])

    var events: [Event] { list.withLock { $0 } }

    var logger: Logger {
        var l = Logger(label: "capture") { _ in Handler(capture: self) }
        l.logLevel = .info
        return l
    }

    func count(containing text: String) -> Int { list.withLock { $0.filter { $0.message.contains(text) }.count } }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }.mapValues { "\($0)" }
            capture.list.withLock { $0.append(Event(message: "\(event.message)", metadata: all)) }
        }
    }
}
