import Coverage
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOEmbedded
import Pyramid
import Server
import Serving
import Tiler

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// The router of a real server on a small sample store, answering one request at a time without
/// sockets: the WMS and WMTS handlers parse their queries and render as they would for a client.
final class RouterHarness: Sendable {
    static let shared = RouterHarness()

    let responder: RouterResponder<DallageRequestContext>
    let logger: Logger

    private init() {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        self.logger = logger
        let store = Self.sampleStore(logger: logger)
        var c = ServerConfiguration()
        c.store = store
        c.database = NSTemporaryDirectory() + "dallage-fuzz-\(UUID().uuidString).sqlite"
        c.tmsDirectory = "config/tms"
        // Renders bounded to small images: the run is about parsing, not pixels.
        c.wmsMaxSize = 64
        do {
            let catalog = PyramidCatalog(store: FolderStore(store), logger: logger)
            let coverage = CoverageService(
                store: try SQLiteCoverageStore(path: c.databasePath), adminTokens: [],
                footprints: StoreFootprints(store: store))
            let service = TileService(
                catalog: catalog, settings: c.serving, gate: PublicationGate(coverage: coverage, logger: logger),
                logger: logger)
            responder = buildRouter(configuration: c, service: service, coverage: coverage).buildResponder()
        } catch {
            fatalError("cannot start the router: \(error)")
        }
    }

    /// A store of 2×2 small dalles tiled for 2154_5cm and PM, made once (DALLAGE_FUZZ_STORE, by
    /// default .build-fuzz/store).
    static func sampleStore(logger: Logger) -> String {
        let dir = ProcessInfo.processInfo.environment["DALLAGE_FUZZ_STORE"] ?? ".build-fuzz/store"
        let store = dir + "/store"
        if FileManager.default.fileExists(atPath: store + "/pcrs/PM/pyramid.json") { return store }
        do {
            let sources = try SampleData.small.write(to: dir + "/src")
            var options = TileOptions(store: store, tmsDirectory: "config/tms")
            options.threads = 1
            let def = TilesetDefinition(id: "pcrs", title: "fuzz", sources: sources, grids: ["2154_5cm", "PM"])
            _ = try Tiler(definition: def, options: options, logger: logger).run()
        } catch {
            fatalError("cannot make the sample store in \(dir): \(error)")
        }
        return store
    }

    /// The first byte chooses WMS or WMTS; the rest is the query string.
    func query(_ bytes: UnsafeRawBufferPointer) {
        guard let first = bytes.first else { return }
        let query = String(decoding: bytes.dropFirst(), as: UTF8.self)
        // Hummingbird parses the target as given; spaces and line breaks cannot reach it from a socket.
        guard !query.contains(where: { $0 == " " || $0.isNewline || $0 == "#" }) else { return }
        let path = (first & 1 == 0 ? "/wms?" : "/wmts?") + query
        let (status, body) = respond(path)
        guard FuzzTarget.strict else { return }
        precondition(status < 500, "\(status) for \(path)")
        if status >= 400, status != 404 {
            precondition(
                XMLParser(data: body).parse(), "unparsable XML for \(path): \(String(decoding: body, as: UTF8.self))")
        }
    }

    /// Status and body of a GET, waited for on this thread.
    func respond(_ path: String) -> (Int, Data) {
        let result = ResultBox()
        let done = DispatchSemaphore(value: 0)
        Task { [responder, logger] in
            defer { done.signal() }
            let request = Request(
                head: .init(method: .get, scheme: "http", authority: "localhost", path: path),
                body: RequestBody(buffer: ByteBuffer()))
            // The thread-safe test channel: the task may run on any thread.
            let channel = NIOAsyncTestingChannel()
            let context = DallageRequestContext(
                source: ApplicationRequestContextSource(channel: channel, logger: logger))
            var response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch let e as any HTTPResponseError {
                response = (try? e.response(from: request, context: context)) ?? Response(status: e.status)
            } catch {
                response = Response(status: .internalServerError)
            }
            let body = ResultBox()
            try? await response.body.write(Collector(sink: body))
            result.set(response.status.code, body.get().1)
            _ = try? await channel.finish()
        }
        done.wait()
        return result.get()
    }
}

/// Gathers a response body into a box (the writer itself is consumed by the body).
struct Collector: ResponseBodyWriter {
    let sink: ResultBox
    mutating func write(_ buffer: ByteBuffer) async throws { sink.append(Data(buffer.readableBytesView)) }
    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// Hands an answer from the task that made it to the waiting thread.
final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: (Int, Data) = (0, Data())
    func set(_ status: Int, _ body: Data) { lock.withLock { value = (status, body) } }
    func append(_ bytes: Data) { lock.withLock { value.1.append(bytes) } }
    func get() -> (Int, Data) { lock.withLock { value } }
}
