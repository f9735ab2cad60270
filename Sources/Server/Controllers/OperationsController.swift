import Foundation
import Hummingbird
import Metrics
import Prometheus
import Pyramid
import Serving

/// `/healthz` and `/metrics` (Prometheus text).
struct OperationsController: Sendable {
    let service: TileService
    let registry: PrometheusCollectorRegistry

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/healthz") { request, _ in
            var health: [String: Any] = [
                "status": "ok", "pyramids": service.catalog.all.count, "tilesets": service.catalog.tilesets.count,
                "fast_lane_tiles": service.fastLaneAnswers,
            ]
            // What an object store cost so far: GETs of shard heads (indexes) and of tiles.
            if let s3 = service.catalog.store as? S3Store {
                health["s3"] = [
                    "gets": s3.counters.gets, "index_gets": s3.counters.indexGets, "tile_gets": s3.counters.tileGets,
                    "bytes": s3.counters.bytes,
                ]
            }
            return try Document.json(health, request: request)
        }
        router.getOrHead("/metrics") { _, _ in
            var buffer: [UInt8] = []
            buffer.reserveCapacity(16 << 10)
            registry.emit(into: &buffer)
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            headers[.cacheControl] = "no-store"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
    }
}

/// The process's metrics registry, installed once as the swift-metrics back end.
public enum DallageMetrics {
    public static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }()
}
