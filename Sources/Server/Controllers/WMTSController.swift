import Foundation
import Hummingbird
import Serving

/// WMTS 1.0.0: KVP at `/wmts` and REST under `/wmts/1.0.0/`.
struct WMTSController: Sendable {
    let service: TileService
    let baseURL: @Sendable (Request) -> String

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/wmts") { request, _ in try await kvp(request) }
        router.getOrHead("/wmts/1.0.0/WMTSCapabilities.xml") { request, _ in capabilities(request) }
        router.getOrHead("/wmts/1.0.0/:layer/:style/:tms/:z/:row/:file") { request, context in
            try await rest(request, context: context)
        }
        // A layer of vintages: `{Time}` after the style (a vintage, or `latest`). The router's trie
        // names a segment once for all routes: here `tms` holds the time, `z` the grid, and so on.
        router.getOrHead("/wmts/1.0.0/:layer/:style/:tms/:z/:row/:file/:last") { request, context in
            try await rest(request, context: context)
        }
    }

    func capabilities(_ request: Request) -> Response {
        let xml = WMTSCapabilities.document(
            pyramids: service.catalog.all, layers: service.catalog.layers, baseURL: baseURL(request))
        return Document.response(Array(xml.utf8), contentType: "application/xml; charset=utf-8", request: request)
    }

    func kvp(_ request: Request) async throws -> Response {
        // Parameter names are case-insensitive (OGC 06-121r3 §11.5.2).
        var p: [String: String] = [:]
        for (k, v) in request.uri.queryParameters { p[k.lowercased()] = String(v) }
        guard let serviceName = p["service"], !serviceName.isEmpty else {
            throw ServingError(.missingParameterValue, locator: "service", "SERVICE=WMTS is required")
        }
        guard serviceName.uppercased() == "WMTS" else {
            throw ServingError(.invalidParameterValue, locator: "service", "SERVICE must be WMTS, not '\(serviceName)'")
        }
        guard let operation = p["request"], !operation.isEmpty else {
            throw ServingError(
                .missingParameterValue, locator: "request", "REQUEST is required (GetCapabilities, GetTile)")
        }
        switch operation.lowercased() {
        case "getcapabilities":
            return capabilities(request)
        case "gettile":
            if let v = p["version"], v != "1.0.0" {
                throw ServingError(.invalidParameterValue, locator: "version", "VERSION must be 1.0.0")
            }
            func required(_ name: String, _ label: String) throws -> String {
                guard let v = p[name], !v.isEmpty else {
                    throw ServingError(.missingParameterValue, locator: label, "\(label.uppercased()) is required")
                }
                return v
            }
            let layer = try required("layer", "Layer")
            let style = try required("style", "Style")
            let format = try required("format", "Format")
            let tms = try required("tilematrixset", "TileMatrixSet")
            let z = try required("tilematrix", "TileMatrix")
            let row = try required("tilerow", "TileRow")
            let col = try required("tilecol", "TileCol")
            guard let encoding = TileEncoding(mimeType: format[...]) else {
                throw ServingError(
                    .invalidParameterValue, locator: "Format",
                    "unknown format '\(format)' (image/jpeg, image/png, image/webp)")
            }
            return try await tile(
                layer: layer, style: style, time: p["time"], tms: tms, z: z, row: row, col: col, encoding: encoding,
                request: request)
        case "getfeatureinfo":
            throw ServingError(.operationNotSupported, locator: "request", "GetFeatureInfo is not offered for imagery")
        default:
            throw ServingError(.invalidParameterValue, locator: "request", "unknown REQUEST '\(operation)'")
        }
    }

    func rest(_ request: Request, context: DallageRequestContext) async throws -> Response {
        let layer = context.parameters.get("layer") ?? ""
        let style = context.parameters.get("style") ?? ""
        var segments = ["tms", "z", "row", "file"].map { context.parameters.get($0) ?? "" }
        var time: String?
        if let last = context.parameters.get("last") {
            // {Time}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.ext: one segment more.
            time = segments.removeFirst()
            segments.append(last)
        }
        let (tms, z, row, file) = (segments[0], segments[1], segments[2], segments[3])
        guard let dot = file.lastIndex(of: ".") else {
            throw ServingError(
                .invalidParameterValue, locator: "Format", "the tile URL must end with .jpg, .png or .webp")
        }
        guard let encoding = TileEncoding(extension: file[file.index(after: dot)...]) else {
            throw ServingError(
                .invalidParameterValue, locator: "Format", "unknown extension '\(file[file.index(after: dot)...])'")
        }
        return try await tile(
            layer: layer, style: style, time: time, tms: tms, z: z, row: row,
            col: String(file[..<dot]), encoding: encoding, request: request)
    }

    private func tile(
        layer: String, style: String, time: String?, tms: String, z: String, row: String, col: String,
        encoding: TileEncoding, request: Request
    ) async throws -> Response {
        guard ["normal", "default"].contains(style.lowercased()) else {
            throw ServingError(.invalidParameterValue, locator: "Style", "unknown style '\(style)' (normal)")
        }
        guard let zi = z.tileIndex else {
            throw ServingError(.invalidParameterValue, locator: "TileMatrix", "TileMatrix '\(z)' is not a level number")
        }
        guard let ri = row.tileIndex else {
            throw ServingError(.invalidParameterValue, locator: "TileRow", "TileRow '\(row)' is not a row number")
        }
        guard let ci = col.tileIndex else {
            throw ServingError(.invalidParameterValue, locator: "TileCol", "TileCol '\(col)' is not a column number")
        }
        return try await TileResponder(service: service).respond(
            TileRequest(tileset: layer, grid: tms, z: zi, col: ci, row: ri, encoding: encoding, vintage: time),
            request: request, strictLimits: true)
    }
}
