import Foundation
import GeoGrid
import Hummingbird
import Pyramid
import Raster
import Render
import Serving

/// WMS 1.3.0 at `/wms`: GetCapabilities and GetMap of every tileset, rendered from the pyramids
/// in Lambert-93, the CC zones, WebMercator or WGS84.
struct WMSController: Sendable {
    let service: TileService
    let configuration: ServerConfiguration
    let baseURL: @Sendable (Request) -> String

    /// The CRSs offered, as WMS names.
    static let crsList =
        ["EPSG:2154"] + (3942...3950).map { "EPSG:\($0)" } + ["EPSG:3857", "EPSG:4326", "CRS:84"]
    static let formats = ["image/jpeg", "image/png", "image/webp"]

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.getOrHead("/wms") { request, context in
            try await context.watchingClient { gone in try await offload { try handle(request) { gone.isRaised } } }
        }
    }

    /// Answers one WMS request; `clientGone` says when to stop drawing a map nobody waits for.
    func handle(_ request: Request, clientGone: () -> Bool = { false }) throws -> Response {
        var p: [String: String] = [:]
        for (k, v) in request.uri.queryParameters { p[k.lowercased()] = String(v) }
        if let s = p["service"], s.uppercased() != "WMS" {
            throw ServingError(.invalidParameterValue, locator: "service", "SERVICE must be WMS")
        }
        guard let operation = p["request"], !operation.isEmpty else {
            throw ServingError(
                .missingParameterValue, locator: "request", "REQUEST is required (GetCapabilities, GetMap)")
        }
        switch operation.lowercased() {
        case "getcapabilities":
            let xml = capabilities(baseURL: baseURL(request))
            return Document.response(Array(xml.utf8), contentType: "text/xml; charset=utf-8", request: request)
        case "getmap":
            return try getMap(
                p, admin: service.viewer(authorization: request.headers[.authorization]) == .administrator,
                clientGone: clientGone)
        default:
            throw ServingError(.operationNotSupported, locator: "request", "REQUEST must be GetCapabilities or GetMap")
        }
    }

    // MARK: - GetMap

    func getMap(_ p: [String: String], admin: Bool, clientGone: () -> Bool = { false }) throws -> Response {
        func required(_ name: String) throws -> String {
            guard let v = p[name], !v.isEmpty else {
                throw ServingError(.missingParameterValue, locator: name, "\(name.uppercased()) is required")
            }
            return v
        }
        let version = p["version"] ?? "1.3.0"
        let layerList = try required("layers")
        let maxLayers = configuration.wmsMaxLayers
        // Counted before splitting: a list of 3000 names is refused without building it.
        guard layerList.utf8.count(where: { $0 == UInt8(ascii: ",") }) < maxLayers else {
            throw ServingError(
                .invalidParameterValue, locator: "layers", "LAYERS may name at most \(maxLayers) layers (LayerLimit)")
        }
        let layers = layerList.split(separator: ",").map(String.init)
        let crsName = (p["crs"] ?? p["srs"] ?? "").uppercased()
        guard !crsName.isEmpty else {
            throw ServingError(.missingParameterValue, locator: "crs", "CRS is required")
        }
        guard Self.crsList.contains(crsName) else {
            throw ServingError(
                .invalidCRS, locator: "crs", "CRS '\(crsName)' is not offered (\(Self.crsList.joined(separator: ", ")))"
            )
        }
        let format = try required("format")
        guard let encoding = TileEncoding(mimeType: format[...]) else {
            throw ServingError(
                .invalidFormat, locator: "format",
                "FORMAT '\(format)' is not offered (\(Self.formats.joined(separator: ", ")))")
        }
        let maxSize = configuration.wmsMaxSize
        guard let width = Int(try required("width")), let height = Int(try required("height")), width > 0,
            height > 0
        else {
            throw ServingError(.invalidParameterValue, locator: "width", "WIDTH and HEIGHT must be positive integers")
        }
        guard width <= maxSize, height <= maxSize else {
            throw ServingError(
                .invalidParameterValue, locator: width > maxSize ? "width" : "height",
                "WIDTH and HEIGHT are limited to \(maxSize) pixels")
        }
        let numbers = try required("bbox").split(separator: ",").compactMap { Double($0) }
        guard numbers.count == 4, numbers.allSatisfy(\.isFinite) else {
            throw ServingError(.invalidParameterValue, locator: "bbox", "BBOX must be four numbers minx,miny,maxx,maxy")
        }
        // WMS 1.3.0 uses EPSG:4326's own axis order: latitude first.
        let latFirst = crsName == "EPSG:4326" && version == "1.3.0"
        let box =
            latFirst
            ? BoundingBox(minX: numbers[1], minY: numbers[0], maxX: numbers[3], maxY: numbers[2])
            : BoundingBox(minX: numbers[0], minY: numbers[1], maxX: numbers[2], maxY: numbers[3])
        guard !box.isEmpty else {
            throw ServingError(.invalidParameterValue, locator: "bbox", "BBOX must have min < max on both axes")
        }
        try Self.checkDomain(box, crs: crsName)
        let styles = (p["styles"] ?? "").split(separator: ",", omittingEmptySubsequences: false)
        for s in styles where !(s.isEmpty || s == "default" || s == "normal") {
            throw ServingError(.styleNotDefined, locator: "styles", "unknown style '\(s)' (use the default style)")
        }
        let transparent = (p["transparent"] ?? "FALSE").uppercased() == "TRUE"
        let background = try Self.colour(p["bgcolor"])
        let crs = try SpatialReference(crsName == "CRS:84" ? "OGC:CRS84" : crsName)
        let window = RenderWindow(bounds: box, width: width, height: height)
        var canvas = [UInt8](repeating: 0, count: width * height * 4)
        var layerPixels = [UInt8](repeating: 0, count: width * height * 4)
        var vintagePixels = [UInt8](repeating: 0, count: width * height * 4)
        for layer in layers {
            // Each layer is a whole render: stop between them when the client has gone.
            guard !clientGone() else {
                throw ServingError(.clientGone, "the client closed the connection")
            }
            // A layer of vintages draws the one TIME names, or all of them oldest first, each newer
            // one over the older (the stacked view); a tileset draws itself.
            let tilesets = try Self.tilesets(of: layer, time: p["time"], catalog: service.catalog)
            for i in layerPixels.indices { layerPixels[i] = 0 }
            for tileset in tilesets {
                guard try draw(tileset, layer: layer, crs: crs, window: window, admin: admin, into: &vintagePixels)
                else { continue }
                Self.composite(vintagePixels, over: &layerPixels)
            }
            Self.composite(layerPixels, over: &canvas)
        }
        let bytes = try Transcoder.encode(
            rgba: canvas, width: width, height: height, as: encoding, quality: 85,
            flattenOver: transparent && encoding != .jpeg ? nil : background)
        var h = HTTPFields()
        h[.contentType] = encoding.mimeType
        h[.cacheControl] =
            admin ? "private, no-store" : service.settings.cacheControl(for: layers.joined(separator: ","))
        return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// The tilesets a WMS layer draws, bottom first: a tileset alone, one vintage of a layer
    /// (`TIME=2024-05`), or all its vintages oldest first (no TIME, `current` or `latest`).
    static func tilesets(of layer: String, time: String?, catalog: PyramidCatalog) throws -> [String] {
        let wanted = time.flatMap { ["", "current", "latest", "default"].contains($0.lowercased()) ? nil : $0 }
        if let l = catalog.layers[layer] {
            guard let wanted else { return l.vintages.reversed().map(\.tileset) }
            guard let t = l.tileset(vintage: wanted) else {
                throw ServingError(
                    .invalidDimensionValue, locator: "time",
                    "layer '\(layer)' has no vintage '\(wanted)' (TIME is one of \(l.vintages.reversed().map(\.vintage.text).joined(separator: ", ")), or current)"
                )
            }
            return [t]
        }
        guard let m = catalog.pyramids(of: layer).first?.manifest else {
            throw ServingError(.layerNotDefined, locator: "layers", "unknown layer '\(layer)'")
        }
        if let wanted, wanted != m.vintage?.text {
            throw ServingError(
                .invalidDimensionValue, locator: "time",
                m.vintage.map { "layer '\(layer)' has only the vintage \($0.text)" }
                    ?? "layer '\(layer)' has no TIME dimension")
        }
        return [layer]
    }

    /// Draws one tileset into `pixels` (cleared first), clipped to its published area when gated;
    /// false when nothing of it falls in the window.
    private func draw(
        _ tileset: String, layer: String, crs: SpatialReference, window: RenderWindow, admin: Bool,
        into pixels: inout [UInt8]
    ) throws -> Bool {
        let pyramids = service.catalog.pyramids(of: tileset)
        guard !pyramids.isEmpty else {
            throw ServingError(.layerNotDefined, locator: "layers", "unknown layer '\(layer)'")
        }
        let pyramid =
            pyramids.first { (try? SpatialReference($0.manifest.tileMatrixSet.crs))?.isSame(as: crs) == true }
            ?? preferredPyramid(
                among: pyramids, setting: configuration.renderGrid, grid: \.grid,
                crs: \.manifest.tileMatrixSet.crs) ?? pyramids[0]
        let renderer: Renderer
        do {
            renderer = try Renderer(pyramid: pyramid.source, crs: crs)
            _ = try renderer.gridBounds(of: window)
        } catch {
            throw ServingError(
                .invalidParameterValue, locator: "bbox",
                "BBOX cannot be drawn from layer '\(layer)' (its grid is in \(pyramid.manifest.tileMatrixSet.crs)): \(error)"
            )
        }
        do {
            let drawn = try pixels.withUnsafeMutableBufferPointer { try renderer.render(window, into: $0.baseAddress!) }
            guard drawn else { return false }
            if pyramid.manifest.publish == .byStatus, !admin {
                try clipToPublished(tileset, crs: crs, window: window, pixels: &pixels)
            }
            return true
        } catch {
            // A shard or object store that cannot answer now is unavailable (503), as for tiles.
            let e = ServingError.from(error, what: "cannot render '\(layer)'")
            guard e.kind == .internal else {
                service.logger.warning("GetMap of '\(layer)' answered \(e.kind): \(error)")
                throw e
            }
            throw ServingError(.noApplicableCode, "cannot render '\(layer)': \(error)")
        }
    }

    /// Refuses a BBOX the CRS cannot carry: beyond ±180° / ±90° in degrees, or beyond 10⁸ m (a
    /// thousand times France) in a projected CRS, where projections return infinities or nothing.
    static func checkDomain(_ box: BoundingBox, crs: String) throws {
        let geographic = crs == "EPSG:4326" || crs == "CRS:84"
        let (limitX, limitY) = geographic ? (180.0, 90.0) : (1e8, 1e8)
        guard box.minX >= -limitX, box.maxX <= limitX, box.minY >= -limitY, box.maxY <= limitY else {
            let range = geographic ? "longitudes -180…180 and latitudes -90…90" : "±1e8 m"
            throw ServingError(
                .invalidParameterValue, locator: "bbox", "BBOX lies outside what \(crs) can carry (\(range))")
        }
    }

    /// Makes everything outside the published perimeters transparent.
    func clipToPublished(_ tileset: String, crs: SpatialReference, window: RenderWindow, pixels: inout [UInt8]) throws {
        guard let gate = service.gate else {
            for i in stride(from: 3, to: pixels.count, by: 4) { pixels[i] = 0 }
            return
        }
        var published = gate.perimeter(of: tileset)
        if !published.isEmpty {
            published = try published.transformed(CoordinateTransform(from: SpatialReference(epsg: 2154), to: crs))
        }
        var mask = [UInt8](repeating: 0, count: window.width * window.height)
        if !published.isEmpty {
            try mask.withUnsafeMutableBufferPointer {
                try published.rasterize(
                    into: $0.baseAddress!, width: window.width, height: window.height, transform: window.transform)
            }
        }
        for i in mask.indices where mask[i] == 0 { pixels[i * 4 + 3] = 0 }
    }

    /// `over` = `layer` over `over`, both RGBA.
    static func composite(_ layer: [UInt8], over canvas: inout [UInt8]) {
        for i in stride(from: 0, to: layer.count, by: 4) {
            let a = Int(layer[i + 3])
            if a == 0 { continue }
            if a == 255 || canvas[i + 3] == 0 {
                for k in 0..<4 { canvas[i + k] = layer[i + k] }
                continue
            }
            for k in 0..<3 { canvas[i + k] = UInt8((Int(layer[i + k]) * a + Int(canvas[i + k]) * (255 - a)) / 255) }
            canvas[i + 3] = UInt8(max(a, Int(canvas[i + 3])))
        }
    }

    /// Parses BGCOLOR (0xRRGGBB); white by default.
    static func colour(_ s: String?) throws -> (UInt8, UInt8, UInt8) {
        guard let s, !s.isEmpty else { return (255, 255, 255) }
        let hex = s.hasPrefix("0x") || s.hasPrefix("0X") ? String(s.dropFirst(2)) : s
        guard hex.count == 6, let v = UInt32(hex, radix: 16) else {
            throw ServingError(.invalidParameterValue, locator: "bgcolor", "BGCOLOR must be 0xRRGGBB")
        }
        return (UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF))
    }

    // MARK: - GetCapabilities

    func capabilities(baseURL: String) -> String {
        let url = XML.escape(baseURL + "/wms?")
        let tilesets = service.catalog.tilesets
        var layers = ""
        var all: BoundingBox?
        for t in tilesets {
            let pyramids = service.catalog.pyramids(of: t)
            let preferred = preferredPyramid(
                among: pyramids, setting: configuration.renderGrid, grid: \.grid,
                crs: \.manifest.tileMatrixSet.crs)
            guard let m = preferred?.manifest else { continue }
            let w = m.wgs84Bounds
            all = all.map { $0.union(w) } ?? w
            let attribution =
                m.attribution.map { "<Attribution><Title>\(XML.escape($0))</Title></Attribution>" } ?? ""
            layers += """
                    <Layer queryable="0" opaque="0">
                      <Name>\(XML.escape(t))</Name>
                      <Title>\(XML.escape(m.title ?? t))</Title>
                      <Abstract>\(XML.escape(m.abstract ?? ""))</Abstract>
                      <EX_GeographicBoundingBox><westBoundLongitude>\(w.minX)</westBoundLongitude><eastBoundLongitude>\(w.maxX)</eastBoundLongitude><southBoundLatitude>\(w.minY)</southBoundLatitude><northBoundLatitude>\(w.maxY)</northBoundLatitude></EX_GeographicBoundingBox>
                      <BoundingBox CRS="EPSG:4326" minx="\(w.minY)" miny="\(w.minX)" maxx="\(w.maxY)" maxy="\(w.maxX)"/>
                      \(attribution)
                      <Style><Name>default</Name><Title>Default</Title></Style>
                    </Layer>

                """
        }
        for layer in service.catalog.layers.values.sorted(by: { $0.id < $1.id }) {
            let ms = layer.vintages.compactMap { v in
                preferredPyramid(
                    among: service.catalog.pyramids(of: v.tileset), setting: configuration.renderGrid, grid: \.grid,
                    crs: \.manifest.tileMatrixSet.crs)?.manifest
            }
            guard let m = ms.first else { continue }
            let w = ms.dropFirst().reduce(m.wgs84Bounds) { $0.union($1.wgs84Bounds) }
            all = all.map { $0.union(w) } ?? w
            let attribution =
                m.attribution.map { "<Attribution><Title>\(XML.escape($0))</Title></Attribution>" } ?? ""
            // WMS 1.3.0 Annex C: the vintages, oldest first; `current` (the default) is the stacked view.
            let values = layer.vintages.reversed().map { XML.escape($0.vintage.text) }.joined(separator: ",")
            layers += """
                    <Layer queryable="0" opaque="0">
                      <Name>\(XML.escape(layer.id))</Name>
                      <Title>\(XML.escape(layer.title))</Title>
                      <Abstract>Vintages \(values); by default the newest published vintage wherever it has data.</Abstract>
                      <EX_GeographicBoundingBox><westBoundLongitude>\(w.minX)</westBoundLongitude><eastBoundLongitude>\(w.maxX)</eastBoundLongitude><southBoundLatitude>\(w.minY)</southBoundLatitude><northBoundLatitude>\(w.maxY)</northBoundLatitude></EX_GeographicBoundingBox>
                      <BoundingBox CRS="EPSG:4326" minx="\(w.minY)" miny="\(w.minX)" maxx="\(w.maxY)" maxy="\(w.maxX)"/>
                      <Dimension name="time" units="ISO8601" default="current" current="1" nearestValue="0">\(values)</Dimension>
                      \(attribution)
                      <Style><Name>default</Name><Title>Default</Title></Style>
                    </Layer>

                """
        }
        let w = all ?? BoundingBox(minX: -5.5, minY: 41, maxX: 10, maxY: 51.5)
        let crs = Self.crsList.map { "<CRS>\($0)</CRS>" }.joined()
        let formats = Self.formats.map { "<Format>\($0)</Format>" }.joined()
        let max = configuration.wmsMaxSize
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms" xmlns:xlink="http://www.w3.org/1999/xlink">
              <Service>
                <Name>WMS</Name>
                <Title>Dallage</Title>
                <OnlineResource xlink:type="simple" xlink:href="\(url)"/>
                <LayerLimit>\(configuration.wmsMaxLayers)</LayerLimit>
                <MaxWidth>\(max)</MaxWidth>
                <MaxHeight>\(max)</MaxHeight>
              </Service>
              <Capability>
                <Request>
                  <GetCapabilities><Format>text/xml</Format><DCPType><HTTP><Get><OnlineResource xlink:type="simple" xlink:href="\(url)"/></Get></HTTP></DCPType></GetCapabilities>
                  <GetMap>\(formats)<DCPType><HTTP><Get><OnlineResource xlink:type="simple" xlink:href="\(url)"/></Get></HTTP></DCPType></GetMap>
                </Request>
                <Exception><Format>XML</Format></Exception>
                <Layer>
                  <Title>Dallage</Title>
                  \(crs)
                  <EX_GeographicBoundingBox><westBoundLongitude>\(w.minX)</westBoundLongitude><eastBoundLongitude>\(w.maxX)</eastBoundLongitude><southBoundLatitude>\(w.minY)</southBoundLatitude><northBoundLatitude>\(w.maxY)</northBoundLatitude></EX_GeographicBoundingBox>
            \(layers)    </Layer>
              </Capability>
            </WMS_Capabilities>

            """
    }
}
