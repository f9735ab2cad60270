import Foundation

/// PCRS production statuses, in their order (the public tracking site's codes).
public enum Statut: String, Codable, Sendable, CaseIterable, Comparable {
    case investigation
    case conventionSignee = "convention_signee"
    case marchePublicEnCours = "marche_public_en_cours"
    case prodEnCours = "prod_en_cours"
    case controleEnCours = "controle_en_cours"
    case realise
    case disponible
    case obsolete

    /// The label users know (French), "Publié" for `disponible`.
    public var label: String {
        switch self {
        case .investigation: "En investigation"
        case .conventionSignee: "Convention signée"
        case .marchePublicEnCours: "Marché public en cours"
        case .prodEnCours: "Production en cours"
        case .controleEnCours: "Contrôle en cours"
        case .realise: "Réalisé"
        case .disponible: "Publié"
        case .obsolete: "Obsolète"
        }
    }

    /// Display colour on coverage maps.
    public var colour: String {
        switch self {
        case .investigation: "#c6dbef"
        case .conventionSignee: "#9ecae1"
        case .marchePublicEnCours: "#6baed6"
        case .prodEnCours: "#fdae6b"
        case .controleEnCours: "#fd8d3c"
        case .realise: "#a1d99b"
        case .disponible: "#31a354"
        case .obsolete: "#969696"
        }
    }

    public static func < (a: Statut, b: Statut) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

public enum Nature: String, Codable, Sendable, CaseIterable {
    case raster, vecteur, mixte
}

public enum Regime: String, Codable, Sendable, CaseIterable {
    case production, maj, anticipation
}

/// A status step: the project entered `statut` on `date_debut` (YYYY-MM-DD).
public struct Etape: Codable, Sendable, Equatable {
    public var statut: Statut
    public var dateDebut: String

    public init(statut: Statut, dateDebut: String) {
        self.statut = statut
        self.dateDebut = dateDebut
    }

    enum CodingKeys: String, CodingKey {
        case statut
        case dateDebut = "date_debut"
    }
}

public struct Acteur: Codable, Sendable, Equatable {
    public var siren: String?
    public var nom: String
    /// `aplc`, `porteur`, `financeur`, `diffuseur`, `presta_vol`, `presta_lidar`, `controleur`…
    public var role: String
}

/// Where a deliverable is published: `tileset` links it to a tileset of this server (its tiled
/// progress and publication); `diffusion` describes an outside service.
public struct Livrable: Codable, Sendable, Equatable {
    public struct Diffusion: Codable, Sendable, Equatable {
        public var protocole: String?
        public var url: String?
        public var couche: String?
    }

    public var nom: String
    public var format: String?
    public var licence: String?
    public var dateLivraison: String?
    public var tileset: String?
    public var diffusion: Diffusion?

    enum CodingKeys: String, CodingKey {
        case nom, format, licence, tileset, diffusion
        case dateLivraison = "date_livraison"
    }

    /// True when there is something to publish: a tileset here or an outside service.
    public var isPublishable: Bool {
        (tileset.map { !$0.isEmpty } ?? false) || (diffusion?.url.map { !$0.isEmpty } ?? false)
    }
}

/// The fields of a project an administrator or editor writes. Field names are the PCRS
/// tracking site's.
public struct ProjectFields: Codable, Sendable, Equatable {
    public var nom: String
    public var nature: Nature
    public var regime: Regime
    /// Territory codes: `commune:<INSEE>`, `epci:<SIREN>`, `departement:<code>`.
    public var perimetres: [String]
    /// A drawn perimeter: a GeoJSON Polygon or MultiPolygon in WGS84.
    public var geometrie: JSONValue?
    public var etapes: [Etape]
    public var acteurs: [Acteur]
    public var livrables: [Livrable]
    public var subventions: [JSONValue]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case nom, nature, regime, perimetres, geometrie, etapes, acteurs, livrables, subventions
    }

    /// The names of the fields a client may write (a PATCH naming anything else is refused).
    public static let fieldNames: Set<String> = Set(CodingKeys.allCases.map(\.rawValue))

    public init(
        nom: String, nature: Nature = .raster, regime: Regime = .production, perimetres: [String] = [],
        geometrie: JSONValue? = nil, etapes: [Etape] = [], acteurs: [Acteur] = [], livrables: [Livrable] = [],
        subventions: [JSONValue] = []
    ) {
        self.nom = nom
        self.nature = nature
        self.regime = regime
        self.perimetres = perimetres
        self.geometrie = geometrie
        self.etapes = etapes
        self.acteurs = acteurs
        self.livrables = livrables
        self.subventions = subventions
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        nom = try c.decode(String.self, forKey: .nom)
        nature = try c.decodeIfPresent(Nature.self, forKey: .nature) ?? .raster
        regime = try c.decodeIfPresent(Regime.self, forKey: .regime) ?? .production
        perimetres = try c.decodeIfPresent([String].self, forKey: .perimetres) ?? []
        geometrie = try c.decodeIfPresent(JSONValue.self, forKey: .geometrie)
        if geometrie == .null { geometrie = nil }
        etapes = try c.decodeIfPresent([Etape].self, forKey: .etapes) ?? []
        acteurs = try c.decodeIfPresent([Acteur].self, forKey: .acteurs) ?? []
        livrables = try c.decodeIfPresent([Livrable].self, forKey: .livrables) ?? []
        subventions = try c.decodeIfPresent([JSONValue].self, forKey: .subventions) ?? []
    }

    /// The fields as compact JSON with sorted keys (stored, compared for the history).
    public func jsonText() throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(self), as: UTF8.self)
    }

    /// The tilesets this project's deliverables are published in.
    public var tilesets: [String] { livrables.compactMap(\.tileset).filter { !$0.isEmpty } }
}

/// A stored project: its fields plus what the service keeps and computes.
public struct Project: Sendable, Equatable {
    public var id: Int64
    public var fields: ProjectFields
    /// The perimeter in Lambert-93 (WKT), the union of territories and the drawn polygon.
    public var perimeterWKT: String
    public var areaM2: Double
    public var createdAt: String
    public var updatedAt: String
    public var deletedAt: String?

    public init(
        id: Int64, fields: ProjectFields, perimeterWKT: String, areaM2: Double, createdAt: String, updatedAt: String,
        deletedAt: String? = nil
    ) {
        self.id = id
        self.fields = fields
        self.perimeterWKT = perimeterWKT
        self.areaM2 = areaM2
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.deletedAt = deletedAt
    }

    /// The current status on `day` (YYYY-MM-DD).
    public func statut(on day: String) -> Statut? { StatusRules.current(fields.etapes, on: day) }
}

/// A territory imported from an administrative boundaries file.
public struct Territory: Sendable, Equatable {
    public enum Level: String, Codable, Sendable, CaseIterable {
        case commune, epci, departement
    }

    public var level: Level
    public var code: String
    public var name: String
    /// The département code (from the INSEE code for communes, the code itself for départements).
    public var departement: String?
    public var wktL93: String
    public var geoJSONWGS84: String
    public var areaM2: Double

    public init(
        level: Level, code: String, name: String, departement: String?, wktL93: String, geoJSONWGS84: String,
        areaM2: Double
    ) {
        self.level = level
        self.code = code
        self.name = name
        self.departement = departement
        self.wktL93 = wktL93
        self.geoJSONWGS84 = geoJSONWGS84
        self.areaM2 = areaM2
    }

    /// `level:code`, as projects list them.
    public var reference: String { "\(level.rawValue):\(code)" }
}

/// One change in a project's history.
public struct HistoryEntry: Codable, Sendable, Equatable {
    public var at: String
    public var actor: String
    public var action: String
    /// Changed fields: `{field: {"from": …, "to": …}}`.
    public var changes: JSONValue
}

/// Any JSON value, for fields passed through as they are (GeoJSON, grants).
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): try c.encode(n)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Compact JSON text.
    public var text: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    /// Parses JSON text.
    public static func parse(_ text: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
}
