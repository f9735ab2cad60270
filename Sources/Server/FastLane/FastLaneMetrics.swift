import Metrics
import NIOHTTP1

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
    /// Per request: switches in the order of `FastRoute.allCases`, `methods` and `statuses`, not
    /// searches of them.
    static func seriesIndex(_ route: FastRoute, method: HTTPMethod, status: HTTPResponseStatus) -> Int? {
        let r =
            switch route {
            case .xyz: 0
            case .wmtsREST: 1
            }
        let m: Int
        switch method {
        case .GET: m = 0
        case .HEAD: m = 1
        default: return nil
        }
        let s: Int
        switch status.code {
        case 200: s = 0
        case 304: s = 1
        default: return nil
        }
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
