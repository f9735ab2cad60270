import Foundation
import GeoGrid
import Hummingbird
import Serving

/// XYZ tiles and TileJSON 3.0.0 under `/tiles/{tileset}/{tms}/`.
struct TilesController: Sendable {
    let service: TileService
    let baseURL: @Sendable (Request) -> String

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/tiles/:tileset/:tms/tilejson.json") { request, context in
            try tileJSON(request, context: context)
        }
        router.getOrHead("/tiles/:tileset/:tms/:z/:x/:file") { request, context in
            try await tile(request, context: context)
        }
    }

    func tile(_ request: Request, context: DallageRequestContext) async throws -> Response {
        let file = context.parameters.get("file") ?? ""
        guard let dot = file.lastIndex(of: "."), let encoding = TileEncoding(extension: file[file.index(after: dot)...])
        else {
            throw ServingError(
                .invalidParameterValue, locator: "format", "the tile URL must end with .jpg, .png or .webp")
        }
        guard let z = (context.parameters.get("z") ?? "").tileIndex,
            let x = (context.parameters.get("x") ?? "").tileIndex,
            let y = String(file[..<dot]).tileIndex
        else {
            throw ServingError(
                .invalidParameterValue, locator: "z/x/y", "z, x and y must be tile numbers")
        }
        let t = TileRequest(
            tileset: context.parameters.get("tileset") ?? "", grid: context.parameters.get("tms") ?? "", z: z, col: x,
            row: y, encoding: encoding)
        return try await TileResponder(service: service).respond(t, request: request, strictLimits: false)
    }

    func tileJSON(_ request: Request, context: DallageRequestContext) throws -> Response {
        let tileset = context.parameters.get("tileset") ?? ""
        let grid = context.parameters.get("tms") ?? ""
        let pyramid: ServedPyramid
        let levels: ClosedRange<Int>
        let w: BoundingBox
        var vintages: [[String: Any]] = []
        if let layer = service.catalog.layers[tileset] {
            // The stacked view, and where each vintage's own TileJSON is.
            let (stack, range) = try service.resolve(stacked: layer, grid: grid)
            (pyramid, levels, w) = (stack.newest, range, stack.wgs84Bounds)
            vintages = layer.vintages.filter { v in stack.pyramids.contains { $0.tileset == v.tileset } }.map {
                [
                    "vintage": $0.vintage.text,
                    "tilejson": "\(baseURL(request))/tiles/\($0.tileset)/\(grid)/tilejson.json",
                ]
            }
        } else {
            (pyramid, levels) = try service.resolve(tileset: tileset, grid: grid, layerParameter: "tileset")
            w = pyramid.manifest.wgs84Bounds
        }
        let m = pyramid.manifest
        let ext = m.format == .jpeg ? "jpg" : "webp"
        var document: [String: Any] = [
            "tilejson": "3.0.0",
            "name": m.title ?? tileset,
            "description": m.abstract ?? "",
            "attribution": m.attribution ?? "",
            "version": "1.0.0",
            "scheme": "xyz",
            "tiles": ["\(baseURL(request))/tiles/\(tileset)/\(grid)/{z}/{x}/{y}.\(ext)"],
            "minzoom": levels.lowerBound,
            "maxzoom": levels.upperBound,
            "bounds": [w.minX, w.minY, w.maxX, w.maxY],
            "center": [
                (w.minX + w.maxX) / 2, (w.minY + w.maxY) / 2, min(levels.upperBound, max(levels.lowerBound, 16)),
            ],
            "tile_matrix_set": m.tileMatrixSet.id,
        ]
        if !vintages.isEmpty {
            document["vintage"] = "latest"
            document["vintages"] = vintages
        } else if let v = m.vintage {
            document["vintage"] = v.text
            if let layer = m.layer { document["layer"] = layer }
        }
        return try Document.json(document, request: request)
    }
}
