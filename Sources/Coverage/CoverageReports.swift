import Foundation
import Raster

/// What readers see: project documents, the coverage map, statistics and CSV exports.
extension CoverageService {
    /// Filters of the coverage map and lists.
    public struct Filter: Sendable {
        public var statut: Statut?
        public var nature: Nature?
        /// `level:code` of a territory the perimeter must intersect.
        public var territoire: String?
        public init(statut: Statut? = nil, nature: Nature? = nil, territoire: String? = nil) {
            self.statut = statut
            self.nature = nature
            self.territoire = territoire
        }
    }

    /// The projects matching a filter.
    public func projects(_ filter: Filter = Filter()) async throws -> [Project] {
        let day = currentDay
        var list = try await store.projects()
        if let s = filter.statut { list = list.filter { $0.statut(on: day) == s } }
        if let n = filter.nature { list = list.filter { $0.fields.nature == n } }
        if let t = filter.territoire {
            guard let territory = try await store.territories(references: [t])[t] else {
                throw CoverageError(.invalid, "unknown territory '\(t)'")
            }
            let g = try Geometry.fromWKT(territory.wktL93)
            list = try list.filter { try Geometry.fromWKT($0.perimeterWKT).intersects(g) }
        }
        return list
    }

    /// A project as the API shows it: its fields, id, current status, area and tiled progress.
    /// Never its editor key.
    public func document(_ p: Project, withProgress: Bool = true) throws -> JSONValue {
        guard case .object(var o) = try JSONValue.parse(p.fields.jsonText()) else { return .null }
        let statut = p.statut(on: currentDay)
        o["id"] = .number(Double(p.id))
        o["statut"] = statut.map { .string($0.rawValue) } ?? .null
        o["statut_libelle"] = statut.map { .string($0.label) } ?? .null
        o["surface_km2"] = .number((p.areaM2 / 1e6 * 1e4).rounded() / 1e4)
        o["created_at"] = .string(p.createdAt)
        o["updated_at"] = .string(p.updatedAt)
        if withProgress {
            o["avancement"] = .array(
                try progress(p).map { t, fraction, missing in
                    .object([
                        "tileset": .string(t),
                        "part_tuilee": fraction.map { .number(($0 * 1e4).rounded() / 1e4) } ?? .null,
                        "manquant_km2": missing.map { .number(($0.area / 1e6 * 1e4).rounded() / 1e4) } ?? .null,
                    ])
                })
        }
        return .object(o)
    }

    /// The missing areas of a project's linked tilesets as a GeoJSON FeatureCollection (WGS84).
    public func missingGeoJSON(_ p: Project) throws -> String {
        let toWGS84 = try CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84())
        let features = try progress(p).compactMap { t, fraction, missing -> String? in
            guard let missing, let fraction else { return nil }
            return """
                {"type":"Feature","properties":{"tileset":\(JSONValue.string(t).text),"part_tuilee":\(fraction),"manquant_km2":\(missing.area / 1e6)},"geometry":\(try missing.transformed(toWGS84).geoJSON(precision: 6))}
                """
        }
        return "{\"type\":\"FeatureCollection\",\"features\":[\(features.joined(separator: ","))]}"
    }

    /// One feature per project (WGS84): status, nature, regime, dates and a display colour.
    public func coverageGeoJSON(_ filter: Filter = Filter()) async throws -> String {
        let day = currentDay
        let toWGS84 = try CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84())
        let features = try await projects(filter).map { p -> String in
            let statut = p.statut(on: day)
            let props: JSONValue = .object([
                "id": .number(Double(p.id)), "nom": .string(p.fields.nom),
                "statut": statut.map { .string($0.rawValue) } ?? .null,
                "statut_libelle": statut.map { .string($0.label) } ?? .null,
                "nature": .string(p.fields.nature.rawValue), "regime": .string(p.fields.regime.rawValue),
                "date_debut": p.fields.etapes.first.map { .string($0.dateDebut) } ?? .null,
                "date_statut": p.fields.etapes.last(where: { $0.dateDebut <= day }).map { .string($0.dateDebut) }
                    ?? .null,
                "couleur": .string(statut?.colour ?? "#bdbdbd"),
                "surface_km2": .number(p.areaM2 / 1e6),
            ])
            let g = try Geometry.fromWKT(p.perimeterWKT).transformed(toWGS84).geoJSON(precision: 6)
            return "{\"type\":\"Feature\",\"id\":\(p.id),\"properties\":\(props.text),\"geometry\":\(g)}"
        }
        return "{\"type\":\"FeatureCollection\",\"features\":[\(features.joined(separator: ","))]}"
    }

    /// Square kilometres and share of the imported territory per current status, overall and per
    /// département. Overlapping projects count once (areas of unions); the territory is the
    /// union of the imported départements, or of the communes when no département was imported.
    public func stats() async throws -> JSONValue {
        let day = currentDay
        let projects = try await store.projects()
        var deps = try await store.territories(level: .departement, query: nil, limit: 1000)
        var territory: [(code: String, geometry: Geometry)]
        if deps.isEmpty {
            deps = try await store.territories(level: .commune, query: nil, limit: 1_000_000)
            let byDep = Dictionary(grouping: deps, by: { $0.departement ?? "?" })
            territory = try byDep.keys.sorted().map { k in
                (k, try Geometry.union(byDep[k]!.map { try Geometry.fromWKT($0.wktL93) }))
            }
        } else {
            territory = try deps.map { ($0.code, try Geometry.fromWKT($0.wktL93)) }
        }
        let whole = try Geometry.union(territory.map(\.geometry))
        var byStatus: [Statut: Geometry] = [:]
        for s in Statut.allCases {
            let parts = try projects.filter { $0.statut(on: day) == s }.map { try Geometry.fromWKT($0.perimeterWKT) }
            if !parts.isEmpty { byStatus[s] = try Geometry.union(parts) }
        }
        func summary(_ area: Geometry?) throws -> JSONValue {
            let total = area?.area ?? byStatus.values.reduce(0) { $0 + $1.area }
            var statuts: [String: JSONValue] = [:]
            for s in Statut.allCases {
                let covered = try byStatus[s].map { g in try area.map { try g.intersection($0).area } ?? g.area } ?? 0
                statuts[s.rawValue] = .object([
                    "km2": .number((covered / 1e6 * 1e4).rounded() / 1e4),
                    "part": total > 0 ? .number((covered / total * 1e6).rounded() / 1e6) : .null,
                ])
            }
            return .object([
                "territoire_km2": area.map { .number(($0.area / 1e6 * 1e4).rounded() / 1e4) } ?? .null,
                "statuts": .object(statuts),
            ])
        }
        var overall = try summary(territory.isEmpty ? nil : whole)
        if case .object(var o) = overall {
            o["projets"] = .number(Double(projects.count))
            o["departements"] = .array(
                try territory.map { code, g in
                    guard case .object(var d) = try summary(g) else { return .null }
                    d["code"] = .string(code)
                    return .object(d)
                })
            overall = .object(o)
        }
        return overall
    }

    /// Projects as CSV (one line each).
    public func projectsCSV() async throws -> String {
        let day = currentDay
        var lines = ["id,nom,nature,regime,statut,date_statut,perimetres,surface_km2,livrables,created_at,updated_at"]
        for p in try await store.projects() {
            let f = p.fields
            lines.append(
                [
                    "\(p.id)", f.nom, f.nature.rawValue, f.regime.rawValue, p.statut(on: day)?.rawValue ?? "",
                    f.etapes.last(where: { $0.dateDebut <= day })?.dateDebut ?? "", f.perimetres.joined(separator: " "),
                    String(format: "%.4f", p.areaM2 / 1e6), f.livrables.map(\.nom).joined(separator: " | "),
                    p.createdAt, p.updatedAt,
                ].map(Self.csvField).joined(separator: ","))
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }

    /// Every status step of every project as CSV.
    public func stepsCSV() async throws -> String {
        var lines = ["projet_id,projet_nom,statut,date_debut"]
        for p in try await store.projects() {
            for e in p.fields.etapes {
                lines.append(
                    ["\(p.id)", p.fields.nom, e.statut.rawValue, e.dateDebut].map(Self.csvField).joined(separator: ","))
            }
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }

    /// RFC 4180 quoting; a leading formula character is neutralised for spreadsheets.
    static func csvField(_ s: String) -> String {
        var v = s
        if let c = v.first, "=+-@".contains(c) { v = "'" + v }
        guard v.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return v }
        return "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
