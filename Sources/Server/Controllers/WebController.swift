import Coverage
import Foundation
import Hummingbird
import Serving

/// The web map at `/`, Leaflet from the system's package, and the small lists the page reads.
struct WebController: Sendable {
    let service: TileService
    let configuration: ServerConfiguration

    /// The page, shipped as a resource of the package.
    static let page: [UInt8] = {
        guard let url = Bundle.module.url(forResource: "index", withExtension: "html", subdirectory: "Web"),
            let data = try? Data(contentsOf: url)
        else { return Array("<!DOCTYPE html><title>Dallage</title><p>The web page is missing from this build.".utf8) }
        return Array(data)
    }()

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/") { request, _ in
            Document.response(Self.page, contentType: "text/html; charset=utf-8", request: request)
        }
        router.getOrHead("/leaflet/:file") { request, context in
            try leaflet(context.parameters.get("file") ?? "", request: request)
        }
        router.getOrHead("/leaflet/images/:file") { request, context in
            try leaflet("images/" + (context.parameters.get("file") ?? ""), request: request)
        }
        router.getOrHead("/api/tilesets") { request, _ in try tilesets(request) }
        router.getOrHead("/api/statuts") { request, _ in
            try Document.json(
                Statut.allCases.map { ["code": $0.rawValue, "libelle": $0.label, "couleur": $0.colour] },
                request: request)
        }
    }

    /// A file of the installed Leaflet package (`leaflet_path`); nothing else is reachable.
    func leaflet(_ name: String, request: Request) throws -> Response {
        let allowed = name.split(separator: "/").allSatisfy { part in
            !part.isEmpty && part != ".." && part.allSatisfy { $0.isLetter || $0.isNumber || "._-".contains($0) }
        }
        let path = (configuration.leafletPath as NSString).appendingPathComponent(name)
        guard allowed, let data = FileManager.default.contents(atPath: path) else {
            throw ServingError(.notFound, "no such file")
        }
        let type: String =
            switch (name as NSString).pathExtension {
            case "js": "text/javascript; charset=utf-8"
            case "css": "text/css; charset=utf-8"
            case "png": "image/png"
            case "svg": "image/svg+xml"
            default: "application/octet-stream"
            }
        var response = Document.response(Array(data), contentType: type, request: request)
        response.headers[.cacheControl] = "public, max-age=86400"
        return response
    }

    func tilesets(_ request: Request) throws -> Response {
        var list: [[String: Any]] = service.catalog.tilesets.compactMap { t in
            let pyramids = service.catalog.pyramids(of: t)
            guard let first = pyramids.first else { return nil }
            let m = first.manifest
            let pm = pyramids.first { $0.grid == "PM" }?.manifest
            var entry: [String: Any] = [
                "id": t, "title": m.title ?? t, "attribution": m.attribution ?? "",
                "grids": pyramids.map(\.grid),
                "bounds": [m.wgs84Bounds.minX, m.wgs84Bounds.minY, m.wgs84Bounds.maxX, m.wgs84Bounds.maxY],
                "max_zoom_pm": pm?.maxZoom ?? 21, "publish": (m.publish ?? .all).rawValue,
            ]
            if let layer = m.layer { entry["layer"] = layer }
            if let vintage = m.vintage { entry["vintage"] = vintage.text }
            return entry
        }
        // Layers of vintages: the stacked view, and its vintages newest first.
        for layer in service.catalog.layers.values.sorted(by: { $0.id < $1.id }) {
            guard let any = layer.stacks.values.first else { continue }
            let w = layer.stacks.values.map(\.wgs84Bounds).reduce(any.wgs84Bounds) { $0.union($1) }
            list.append([
                "id": layer.id, "title": layer.title,
                "attribution": any.newest.manifest.attribution ?? "", "grids": layer.stacks.keys.sorted(),
                "bounds": [w.minX, w.minY, w.maxX, w.maxY], "max_zoom_pm": layer.stacks["PM"]?.maxZoom ?? 21,
                "publish": "by-vintage",
                "vintages": layer.vintages.map { ["vintage": $0.vintage.text, "tileset": $0.tileset] },
            ])
        }
        return try Document.json(list, request: request)
    }
}
