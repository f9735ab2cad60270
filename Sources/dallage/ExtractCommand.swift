import ArgumentParser
import Coverage
import Foundation
import Logging
import Pyramid
import Raster
import Render
import Serving

extension ExtractFormat: ExpressibleByArgument {}

struct ExtractCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Clip a pyramid to a polygon or a territory, georeferenced, in Lambert-93 or a CC zone.")

    @Option(help: "Tileset id, or a layer of vintages.") var tileset: String
    @Option(help: "For a layer: a vintage (2024-05) or latest, the stacked view (default).") var vintage: String?
    @Option(help: "GeoJSON file (Polygon, MultiPolygon or a Feature; WGS84 unless it names a crs).")
    var geometry: String?
    @Option(help: "A territory instead: commune:<INSEE>, epci:<SIREN>, departement:<code>.") var territory: String?
    @Option(help: "Buffer around the polygon, in metres.") var buffer: Double = 0
    @Option(help: "Output CRS, e.g. EPSG:2154 or EPSG:3949 (CC49).") var crs = "EPSG:2154"
    @Option(help: "Pixel size in metres (default: the pyramid's native resolution).") var resolution: Double?
    @Option(help: "gtiff, cog, jpeg, png or jp2.") var format: ExtractFormat = .gtiff
    @Option(
        help: """
            Grid whose pyramid is read (the server's render_grid); without one, the tileset's first \
            Lambert-93 grid, else its first.
            """)
    var grid = defaultRenderGrid
    @Option(help: "Output file.") var out: String
    @OptionGroup var database: DatabaseOptions

    func run() async throws {
        var logger = Logger(label: "dallage.extract")
        logger.logLevel = .error
        // Written here, whatever its size: the queue is the server's.
        var settings = ExtractSettings(directory: NSTemporaryDirectory())
        settings.limits.directPixels = .max
        settings.renderGrid = grid
        // A store in a bucket is read as the server reads it (the catalog's sources, ranged GETs).
        try await database.withService(grid: grid) { coverage, store in
            let catalog = PyramidCatalog(store: store, logger: logger)
            guard let jobs = coverage.store as? any ExtractJobStore else { throw ValidationError("no job store") }
            let service = ExtractService(
                catalog: catalog, coverage: coverage, jobs: jobs, gate: nil, settings: settings, logger: logger)
            var geo: JSONValue?
            if let geometry {
                let text = try String(contentsOfFile: geometry, encoding: .utf8)
                var v = try JSONValue.parse(text)
                // A FeatureCollection's first feature; a crs member of the collection applies to it.
                let crs = v["crs"]
                if v["type"] == .string("FeatureCollection"), case .array(let f) = v["features"] ?? .null,
                    let first = f.first
                {
                    v = first
                }
                if v["type"] == .string("Feature"), let g = v["geometry"] { v = g }
                if let crs, v["crs"] == nil, case .object(var o) = v {
                    o["crs"] = crs
                    v = .object(o)
                }
                geo = v
            }
            let request = ExtractRequest(
                tileset: tileset, geometry: geo, territory: territory, bufferM: buffer, crs: crs,
                resolution: resolution,
                format: format, vintage: vintage)
            let plan: ExtractPlan
            let source: any PyramidSource
            do {
                // The command line reads the store directly: it sees what an administrator sees.
                (plan, source) = try await service.plan(request, admin: true)
            } catch let e as ServingError {
                throw ValidationError(e.message)
            } catch let e as ExtractError {
                throw ValidationError(e.message)
            }
            let terminal = isatty(STDERR_FILENO) != 0
            let started = Date()
            var lastShown = -1
            FileHandle.standardError.write(
                Data(
                    "extract \(plan.window.width)×\(plan.window.height) px at \(plan.resolution) m in \(plan.crs) → \(out)\n"
                        .utf8))
            if plan.repaired {
                FileHandle.standardError.write(Data("note: the polygon was invalid and has been repaired\n".utf8))
            }
            try Extractor.write(plan, pyramid: source, to: out) { fraction in
                let percent = Int(fraction * 100)
                if terminal {
                    let bar =
                        String(repeating: "█", count: percent / 4) + String(repeating: "·", count: 25 - percent / 4)
                    FileHandle.standardError.write(Data("\r[\(bar)] \(percent)%".utf8))
                } else if percent / 10 != lastShown / 10 {
                    FileHandle.standardError.write(Data("extract: \(percent)%\n".utf8))
                }
                lastShown = percent
                return true
            }
            if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
            let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
            print(
                String(
                    format: "wrote %@ (%.1f MB) in %.1f s", out, Double(size) / 1e6, Date().timeIntervalSince(started)))
        }
    }
}
