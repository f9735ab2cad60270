import Foundation
import GeoGrid
import Hummingbird
import Pyramid
import Serving

/// OGC API — Tiles (core, tileset, tilesets list, TileMatrixSet definitions) under `/ogc`.
struct OGCController: Sendable {
    let service: TileService
    let configuration: ServerConfiguration
    let baseURL: @Sendable (Request) -> String

    static let conformance = [
        "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/json",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/png",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/jpeg",
        "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
        "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
    ]

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/ogc") { request, _ in try landing(request) }
        router.getOrHead("/ogc/conformance") { request, _ in
            try Document.json(["conformsTo": Self.conformance], request: request)
        }
        router.getOrHead("/ogc/tileMatrixSets") { request, _ in try tileMatrixSets(request) }
        router.getOrHead("/ogc/tileMatrixSets/:id") { request, context in
            try tileMatrixSet(request, context.parameters.get("id") ?? "")
        }
        router.getOrHead("/ogc/collections") { request, _ in try collections(request) }
        router.getOrHead("/ogc/collections/:c") { request, context in
            try collection(request, context.parameters.get("c") ?? "")
        }
        router.getOrHead("/ogc/collections/:c/map/tiles") { request, context in
            try tilesets(request, context.parameters.get("c") ?? "")
        }
        router.getOrHead("/ogc/collections/:c/map/tiles/:tms") { request, context in
            try tileset(request, context.parameters.get("c") ?? "", context.parameters.get("tms") ?? "")
        }
        router.getOrHead("/ogc/collections/:c/map/tiles/:tms/:z/:row/:col") { request, context in
            try await tile(request, context)
        }
    }

    private func link(_ href: String, _ rel: String, _ type: String, _ title: String? = nil) -> [String: Any] {
        var l: [String: Any] = ["href": href, "rel": rel, "type": type]
        if let title { l["title"] = title }
        return l
    }

    func landing(_ request: Request) throws -> Response {
        let b = baseURL(request)
        return try Document.json(
            [
                "title": "Dallage",
                "description": "Orthophotography tiles (PCRS image and orthophotos) in Lambert-93 and WebMercator.",
                "links": [
                    link("\(b)/ogc", "self", "application/json", "This document"),
                    link(
                        "\(b)/ogc/conformance", "http://www.opengis.net/def/rel/ogc/1.0/conformance", "application/json"
                    ),
                    link("\(b)/ogc/collections", "http://www.opengis.net/def/rel/ogc/1.0/data", "application/json"),
                    link(
                        "\(b)/ogc/tileMatrixSets", "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes",
                        "application/json"),
                    link(
                        "\(b)/wmts?SERVICE=WMTS&REQUEST=GetCapabilities", "alternate", "application/xml",
                        "WMTS capabilities"),
                ],
            ], request: request)
    }

    private var grids: [String: TileMatrixSet] {
        var out: [String: TileMatrixSet] = [:]
        for p in service.catalog.all { out[p.manifest.tileMatrixSet.id] = p.manifest.tileMatrixSet }
        if let catalog = try? PyramidGridCatalog.load(configuration.tmsDirectory) {
            for (k, v) in catalog where out[k] == nil { out[k] = v }
        }
        return out
    }

    func tileMatrixSets(_ request: Request) throws -> Response {
        let b = baseURL(request)
        return try Document.json(
            [
                "tileMatrixSets": grids.keys.sorted().map { id in
                    [
                        "id": id, "title": grids[id]?.title ?? id,
                        "links": [link("\(b)/ogc/tileMatrixSets/\(id)", "self", "application/json")],
                    ] as [String: Any]
                }
            ], request: request)
    }

    func tileMatrixSet(_ request: Request, _ id: String) throws -> Response {
        guard let tms = grids[id] else {
            throw ServingError(.notFound, locator: "tileMatrixSetId", "unknown tile matrix set '\(id)'")
        }
        return Document.response(
            Array(try JSONEncoder().encode(tms)), contentType: "application/json", request: request)
    }

    private func collectionObject(_ request: Request, _ id: String) -> [String: Any]? {
        let layer = service.catalog.layers[id]
        let pyramids = layer.map { $0.stacks.values.map(\.newest) } ?? service.catalog.pyramids(of: id)
        guard let first = pyramids.first else { return nil }
        let m = first.manifest
        let w = layer?.stacks.values.map(\.wgs84Bounds).reduce(m.wgs84Bounds) { $0.union($1) } ?? m.wgs84Bounds
        let b = baseURL(request)
        var extent: [String: Any] = [
            "spatial": [
                "bbox": [[w.minX, w.minY, w.maxX, w.maxY]], "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
            ]
        ]
        // The vintages as a temporal extent: from the oldest's first day on (`datetime=` picks one).
        let vintages = layer?.vintages.map(\.vintage) ?? m.vintage.map { [$0] } ?? []
        if let oldest = vintages.last {
            let d = oldest.firstDay
            extent["temporal"] = [
                "interval": [
                    [String(format: "%04d-%02d-%02dT00:00:00Z", d / 10_000, d / 100 % 100, d % 100), NSNull()]
                ],
                "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian",
            ]
        }
        return [
            "id": id, "title": layer?.title ?? m.title ?? id, "description": m.abstract ?? "",
            "attribution": m.attribution ?? "",
            "vintages": vintages.map(\.text),
            "extent": extent,
            "links": [
                link("\(b)/ogc/collections/\(id)", "self", "application/json"),
                link(
                    "\(b)/ogc/collections/\(id)/map/tiles", "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map",
                    "application/json"),
            ],
        ]
    }

    func collections(_ request: Request) throws -> Response {
        try Document.json(
            [
                "collections": (service.catalog.tilesets + service.catalog.layers.keys.sorted()).compactMap {
                    collectionObject(request, $0)
                },
                "links": [link("\(baseURL(request))/ogc/collections", "self", "application/json")],
            ], request: request)
    }

    func collection(_ request: Request, _ id: String) throws -> Response {
        guard let c = collectionObject(request, id) else {
            throw ServingError(.notFound, locator: "collectionId", "unknown collection '\(id)'")
        }
        return try Document.json(c, request: request)
    }

    private func tilesetObject(_ request: Request, _ p: ServedPyramid, stack: PyramidStack? = nil) -> [String: Any] {
        let m = p.manifest
        let b = baseURL(request)
        let ext = m.format == .jpeg ? "jpg" : "webp"
        let id = stack?.layer ?? p.tileset
        let levels = stack.map { s in (s.minZoom...s.maxZoom).compactMap { s.level($0)?.limits } } ?? m.levels
        return [
            "title": "\(m.title ?? id) — \(p.grid)",
            "dataType": "map",
            "crs": m.tileMatrixSet.crs,
            "tileMatrixSetURI": m.tileMatrixSet.uri ?? "\(b)/ogc/tileMatrixSets/\(p.grid)",
            "tileMatrixSetLimits": levels.map {
                [
                    "tileMatrix": String($0.z), "minTileRow": $0.minRow, "maxTileRow": $0.maxRow,
                    "minTileCol": $0.minCol, "maxTileCol": $0.maxCol,
                ]
            },
            "links": [
                link("\(b)/ogc/collections/\(id)/map/tiles/\(p.grid)", "self", "application/json"),
                link(
                    "\(b)/ogc/tileMatrixSets/\(p.grid)", "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme",
                    "application/json"),
                [
                    "href":
                        "\(b)/ogc/collections/\(id)/map/tiles/\(p.grid)/{tileMatrix}/{tileRow}/{tileCol}?f=\(ext)",
                    "rel": "item", "type": m.format.mimeType, "templated": true,
                ] as [String: Any],
            ],
        ]
    }

    func tilesets(_ request: Request, _ id: String) throws -> Response {
        if let layer = service.catalog.layers[id] {
            let stacks = layer.stacks.values.sorted { $0.grid < $1.grid }
            return try Document.json(
                ["tilesets": stacks.map { tilesetObject(request, $0.newest, stack: $0) }], request: request)
        }
        let ps = service.catalog.pyramids(of: id)
        guard !ps.isEmpty else {
            throw ServingError(.notFound, locator: "collectionId", "unknown collection '\(id)'")
        }
        return try Document.json(["tilesets": ps.map { tilesetObject(request, $0) }], request: request)
    }

    func tileset(_ request: Request, _ id: String, _ grid: String) throws -> Response {
        if let layer = service.catalog.layers[id] {
            let (s, _) = try service.resolve(stacked: layer, grid: grid)
            return try Document.json(tilesetObject(request, s.newest, stack: s), request: request)
        }
        let (p, _) = try service.resolve(tileset: id, grid: grid, layerParameter: "collectionId")
        return try Document.json(tilesetObject(request, p), request: request)
    }

    func tile(_ request: Request, _ context: DallageRequestContext) async throws -> Response {
        let f = request.uri.queryParameters["f"].map(String.init)
        let accept = request.headers[.accept] ?? ""
        let encoding: TileEncoding
        if let f {
            guard let e = TileEncoding(extension: f[...]) ?? TileEncoding(mimeType: f[...]) else {
                throw ServingError(
                    .invalidParameterValue, locator: "f", "unknown format '\(f)' (jpg, png, webp)")
            }
            encoding = e
        } else if accept.contains("image/png") && !accept.contains("image/jpeg") {
            encoding = .png
        } else if accept.contains("image/webp") && !accept.contains("image/jpeg") {
            encoding = .webp
        } else {
            encoding = .jpeg
        }
        guard let z = (context.parameters.get("z") ?? "").tileIndex,
            let row = (context.parameters.get("row") ?? "").tileIndex,
            let col = (context.parameters.get("col") ?? "").tileIndex
        else {
            throw ServingError(
                .invalidParameterValue, locator: "tileMatrix", "tileMatrix, tileRow and tileCol must be numbers")
        }
        let collection = context.parameters.get("c") ?? ""
        let t = TileRequest(
            tileset: collection, grid: context.parameters.get("tms") ?? "", z: z, col: col, row: row,
            encoding: encoding,
            vintage: try request.uri.queryParameters["datetime"].flatMap { try vintage(of: collection, at: String($0)) }
        )
        return try await TileResponder(service: service).respond(t, request: request, strictLimits: true)
    }

    /// The vintage `datetime=` designates: the newest begun on or before the instant (the end of
    /// an interval; `..` or an open end is now, the latest). Nil for the latest.
    func vintage(of collection: String, at datetime: String) throws -> String? {
        let instant = datetime.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? ""
        guard !instant.isEmpty, instant != ".." else { return nil }
        guard let day = Vintage.day(ofInstant: instant) else {
            throw ServingError(
                .badInput, locator: "datetime",
                "datetime '\(datetime)' is not an ISO 8601 instant or interval (2024-05-17, 2024-05-17T10:00:00Z, ../2024-05-17)"
            )
        }
        let vintages =
            service.catalog.layers[collection]?.vintages.map(\.vintage)
            ?? service.catalog.pyramids(of: collection).first?.manifest.vintage.map { [$0] } ?? []
        guard !vintages.isEmpty else { return nil }
        guard let v = vintages.first(where: { $0.firstDay <= day }) else {
            throw ServingError(
                .notFound, locator: "datetime",
                "no vintage of '\(collection)' began on or before \(instant) (oldest: \(vintages.last!.text))")
        }
        return v.text
    }
}

/// The grids of the configuration folder (for `/ogc/tileMatrixSets`).
enum PyramidGridCatalog {
    static func load(_ directory: String) throws -> [String: TileMatrixSet] {
        var out: [String: TileMatrixSet] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: directory) where f.hasSuffix(".json") {
            let data = try Data(contentsOf: URL(fileURLWithPath: (directory as NSString).appendingPathComponent(f)))
            if let t = try? TileMatrixSet.decode(data) { out[t.id] = t }
        }
        return out
    }
}
