import Foundation
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
        let (pyramid, levels) = try service.resolve(
            tileset: tileset, grid: grid, layerParameter: "tileset")
        let m = pyramid.manifest
        let w = m.wgs84Bounds
        let ext = m.format == .jpeg ? "jpg" : "webp"
        let document: [String: Any] = [
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
        return try Document.json(document, request: request)
    }
}
