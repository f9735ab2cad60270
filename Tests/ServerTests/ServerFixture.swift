import Foundation
import GeoGrid
import Hummingbird
import HummingbirdTesting
import Logging
import Pyramid
import Raster
import S3
import Server
import TestSupport
import Testing
import Tiler

@testable import Serving

/// A small store (2×2 dalles of 25.6 m at 5 cm, tiled for 2154_5cm and PM), built once.
enum ServerFixture {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// Built by the first test that asks, on `Blocking.queue` so that the build's workers do not
    /// take the threads the servers of other suites answer on.
    static let shared: String = {
        let dir = NSTemporaryDirectory() + "dallage-server-\(UUID().uuidString)"
        // swift-format-ignore: NeverUseForceTry
        try! Blocking.queue.sync { try build(in: dir) }
        return dir
    }()

    static func build(in dir: String) throws {
        let sources = try SampleData.small.write(to: dir + "/src")
        var options = TileOptions(store: dir + "/store", tmsDirectory: root + "/config/tms")
        options.threads = 2
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var def = TilesetDefinition(id: "pcrs", title: "PCRS test", sources: sources, grids: ["2154_5cm", "PM"])
        def.attribution = "Test & Co"
        _ = try Tiler(
            definition: def, options: options, logger: logger, progress: Progress(logger: logger, interactive: false)
        )
        .run()
    }

    /// A private copy of the shared store, for tests that change it.
    static func copy() throws -> String {
        let dir = NSTemporaryDirectory() + "dallage-server-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: shared + "/store", toPath: dir + "/store")
        return dir
    }

    /// A server on the folder `store`, or on `reading` (an `s3://` store) when given; quiet unless
    /// given a `logger`.
    static func app(
        store: String, reading: (any PyramidStore)? = nil, extractResults: (any ExtractResultStore)? = nil,
        objects: S3Client? = nil, logger given: Logger? = nil, configure: (inout ServerConfiguration) -> Void = { _ in }
    ) throws
        -> some ApplicationProtocol
    {
        var c = ServerConfiguration()
        c.store = store
        c.database = NSTemporaryDirectory() + "dallage-test-\(UUID().uuidString).sqlite"
        // Never inside the store: tests copy the shared store while others extract from it.
        c.extractsDirectory = NSTemporaryDirectory() + "dallage-extracts-\(UUID().uuidString)"
        c.tmsDirectory = root + "/config/tms"
        c.rescanSeconds = 0.2
        // A live test's own client may sit unused for minutes on a loaded machine while the test
        // works through other connections; the server's 60 s idle timeout closed it under it ("I/O
        // on closed channel" when used again). Tests of the timeout set their own.
        c.idleTimeoutSeconds = 3600
        configure(&c)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try buildApplication(
            configuration: c, store: reading, extractResults: extractResults, objects: objects, logger: given ?? logger)
    }

    /// Tiles this server's fast lane has answered so far (from /healthz: the Prometheus counter
    /// is shared by the servers of tests running at the same time).
    /// A second client of the live server `live` tests with, waiting up to 120 s for an answer
    /// where Hummingbird's own gives up after 20: what a test compares is answers, not their
    /// speed, and the suite runs beside tilers, browsers and QGIS on two cores.
    static func patient<Value: Sendable>(
        _ live: some TestClientProtocol, _ body: @escaping @Sendable (PatientClient) async throws -> Value
    ) async throws -> Value {
        let port = try #require(live.port)
        return try await TestClient.withClient(
            host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(120))
        ) { try await body(PatientClient(client: $0, port: port)) }
    }

    /// A `TestClient` answering as the live test's client does (status, headers, body).
    struct PatientClient: Sendable {
        let client: TestClient
        let port: Int?

        struct Answer: Sendable {
            var status: HTTPResponse.Status
            var headers: HTTPFields
            var body: ByteBuffer
        }

        func execute<Value>(
            uri: String, method: HTTPRequest.Method, headers: HTTPFields = [:], _ check: (Answer) throws -> Value
        ) async throws -> Value {
            var headers = headers
            headers[.connection] = "keep-alive"
            let r = try await client.execute(.init(uri, method: method, authority: "localhost", headers: headers))
            return try check(Answer(status: r.head.status, headers: r.head.headerFields, body: r.body ?? ByteBuffer()))
        }
    }

    static func fastLaneCount(_ client: PatientClient) async throws -> Int {
        try await client.execute(uri: "/healthz", method: .get) { try fastLaneTiles($0.body) }
    }

    /// The fast lane's count in a `/healthz` answer, -1 when it has none.
    static func fastLaneTiles(_ healthz: ByteBuffer) throws -> Int {
        (try JSONSerialization.jsonObject(with: Data(buffer: healthz)) as? [String: Any])?["fast_lane_tiles"] as? Int
            ?? -1
    }

    static func fastLaneCount(_ client: some TestClientProtocol) async throws -> Int {
        try await client.execute(uri: "/healthz", method: .get) { try fastLaneTiles($0.body) }
    }

    /// Squared differences between `rgb` — `size` × `size` pixels of `cell` m in Lambert-93 from
    /// the top-left corner (`minX`, `maxY`) — and the 2154_5cm pyramid's pixels at level `z`:
    /// their sum and the number of values compared (pixels the pyramid lacks are skipped).
    static func differenceFromPyramid(
        _ rgb: [UInt8], size: Int, minX: Double, maxY: Double, z: Int, cell: Double, pyramid: PyramidReader
    ) throws -> (sum: Double, count: Int) {
        let span = 256 * cell
        var sum = 0.0
        var n = 0
        for y in 0..<size {
            for x in 0..<size {
                let gx = minX + (Double(x) + 0.5) * cell
                let gy = maxY - (Double(y) + 0.5) * cell
                let (col, row) = (Int(gx / span), Int((12_000_000 - gy) / span))
                guard let tile = try pyramid.decodeTile(TileCoordinate(z: z, col: col, row: row)) else { continue }
                let px = Int((gx - Double(col) * span) / cell)
                let py = Int(((12_000_000 - gy) - Double(row) * span) / cell)
                for k in 0..<3 {
                    let d = Double(tile[(py * 256 + px) * 4 + k]) - Double(rgb[(y * size + x) * 3 + k])
                    sum += d * d
                    n += 1
                }
            }
        }
        return (sum, n)
    }

    /// A z22 tile of the 2154_5cm pyramid that is wholly inside the data.
    static let innerTile = TileCoordinate(z: 22, col: 55_000, row: 385_938)
    /// A z22 tile cut by the top edge of the data (half transparent).
    static let edgeTile = TileCoordinate(z: 22, col: 55_000, row: 385_937)

    @discardableResult
    /// The per-dataset mask of a GeoTIFF (0 = no data).
    static func maskOf(_ path: String) throws -> [UInt8] {
        let ds = try Dataset.open(path)
        var mask = [UInt8](repeating: 0, count: ds.width * ds.height)
        try mask.withUnsafeMutableBufferPointer { try ds.readMask(into: $0.baseAddress!) }
        return mask
    }

    /// How many of ``innerTile``'s pixels GDAL's WMTS driver reads from the server at `base`
    /// (its capabilities, layer `pcrs`, grid 2154_5cm, the tile's window) equal to `expected`
    /// (the tile's RGBA pixels as the pyramid holds them): 256 × 256 when every one does.
    static func pixelsGDALReadsLikeThePyramid(
        base: String, pyramid: PyramidReader, expected: [UInt8]
    ) async throws -> Int {
        let t = innerTile
        let out = NSTemporaryDirectory() + "wmts-\(UUID().uuidString).tif"
        defer { try? FileManager.default.removeItem(atPath: out) }
        guard let tms = pyramid.manifest.tileMatrixSet.matrix(22) else { return 0 }
        let minX = tms.originX + Double(t.col) * 12.8
        let maxY = tms.originY - Double(t.row) * 12.8
        let (status, log) = try await run(
            "/usr/bin/gdal_translate",
            [
                // No disk cache: every run must fetch from the server it tests.
                "--config", "GDAL_ENABLE_WMS_CACHE", "NO", "-q",
                "WMTS:\(base)/wmts/1.0.0/WMTSCapabilities.xml,layer=pcrs,tilematrixset=2154_5cm",
                "-projwin", "\(minX)", "\(maxY)", "\(minX + 12.8)", "\(maxY - 12.8)", "-b", "1", "-b", "2", "-b", "3",
                out,
            ])
        guard status == 0 else { throw HarnessFailure("gdal_translate failed: \(log)") }
        let ds = try Dataset.open(out)
        guard ds.width == 256, ds.height == 256 else { return 0 }
        var px = [UInt8](repeating: 255, count: 256 * 256 * 4)
        try px.withUnsafeMutableBufferPointer { p in
            try ds.read(
                x: 0, y: 0, width: 256, height: 256, bands: [1, 2, 3], into: p.baseAddress!, bufferWidth: 256,
                bufferHeight: 256, pixelSpace: 4)
        }
        var same = 0
        for i in stride(from: 0, to: px.count, by: 4)
        where px[i] == expected[i] && px[i + 1] == expected[i + 1] && px[i + 2] == expected[i + 2] {
            same += 1
        }
        return same
    }

    struct HarnessFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// Runs a tool to its end on `Blocking.queue`: the server under test keeps its threads.
    static func run(_ tool: String, _ arguments: [String]) async throws -> (Int32, String) {
        try await Blocking.run { try runBlocking(tool, arguments) }
    }

    static func runBlocking(_ tool: String, _ arguments: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
