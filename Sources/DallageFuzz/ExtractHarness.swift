import Coverage
import Foundation
import GeoGrid
import Raster
import Render
import Serving

/// Decodes an extract request as `POST /api/extracts` does and plans it against a fixed coverage
/// (the sample store's area), without writing anything.
enum ExtractHarness {
    /// A GDAL geometry per input: its handle is not shared.
    static var coverage: Geometry {
        Geometry.rectangle(BoundingBox(minX: 704_000, minY: 7_059_948.8, maxX: 704_051.2, maxY: 7_060_000))
    }

    static func plan(_ bytes: UnsafeRawBufferPointer) {
        guard let r = try? JSONDecoder().decode(ExtractRequest.self, from: Data(bytes)), var g = r.geometry else {
            return
        }
        var crs = "EPSG:4326"
        if g["type"] == .string("Feature"), let inner = g["geometry"] { g = inner }
        if case .string(let name) = g["crs"]?["properties"]?["name"] ?? .null { crs = name }
        guard let geometry = try? Geometry.fromGeoJSON(g.text) else { return }
        do {
            let plan = try Extractor.plan(
                tileset: r.tileset, geometry: geometry, geometryCRS: crs, bufferMetres: r.bufferM ?? 0,
                crs: r.crs ?? "EPSG:2154", resolution: r.resolution, format: r.format ?? .gtiff,
                nativeResolution: 0.05, coverage: coverage, allowed: nil, limits: ExtractLimits())
            precondition(plan.window.width > 0 && plan.window.height > 0 && plan.resolution > 0)
        } catch {
            // Refusals are answers (400, 403, 413, 422): each says what to fix.
            precondition(!error.message.isEmpty || !FuzzTarget.strict, "a refusal without a reason")
        }
    }
}
