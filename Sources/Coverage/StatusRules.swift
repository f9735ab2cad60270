import Foundation

/// Why a write was refused. `status` is the HTTP status the API answers with.
public struct CoverageError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The request is well-formed but breaks a rule (422).
        case invalid
        /// Malformed input (400).
        case malformed
        case notFound
        /// Another project already has this name (409).
        case conflict
        case unauthorized
        case forbidden
        /// The database cannot take writes now (deleted, replaced or read-only): 503 with the reason.
        case unavailable
        /// The disk holding the database is full: nothing was changed (507).
        case insufficientStorage
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// The PCRS rules on status steps.
public enum StatusRules {
    /// The current status: the latest step whose start date is not after `day` (YYYY-MM-DD).
    /// Steps on the same date count in list order.
    public static func current(_ etapes: [Etape], on day: String) -> Statut? {
        var best: Etape?
        for e in etapes where e.dateDebut <= day {
            if let b = best, b.dateDebut > e.dateDebut { continue }
            best = e
        }
        return best?.statut
    }

    /// Today as YYYY-MM-DD (UTC).
    public static func today(_ now: Date = Date()) -> String { day(now) }

    public static func day(_ date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd"
        return f.string(from: date)
    }

    /// True for a real calendar date written YYYY-MM-DD.
    public static func isDate(_ s: String) -> Bool {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd"
        f.isLenient = false
        guard s.count == 10, let d = f.date(from: s) else { return false }
        return f.string(from: d) == s
    }

    /// Checks a project's fields; `territoryExists` answers for `level:code` references and
    /// `tilesetExists` for the tilesets a `disponible` project's deliverables name (a deliverable
    /// published in a tileset this server does not have publishes nothing).
    public static func validate(
        _ p: ProjectFields, territoryExists: (String) -> Bool, tilesetExists: (String) -> Bool = { _ in true }
    ) throws(CoverageError) {
        if p.nom.trimmingCharacters(in: .whitespaces).isEmpty {
            throw CoverageError(.invalid, "nom must not be empty")
        }
        for (i, e) in p.etapes.enumerated() {
            guard isDate(e.dateDebut) else {
                throw CoverageError(.invalid, "etapes[\(i)].date_debut '\(e.dateDebut)' is not a date (YYYY-MM-DD)")
            }
            if i > 0, e.dateDebut < p.etapes[i - 1].dateDebut {
                throw CoverageError(
                    .invalid,
                    "etapes[\(i)] (\(e.statut.rawValue), \(e.dateDebut)) starts before etapes[\(i - 1)] "
                        + "(\(p.etapes[i - 1].statut.rawValue), \(p.etapes[i - 1].dateDebut)): step dates must not go backwards"
                )
            }
        }
        if p.etapes.contains(where: { $0.statut == .disponible }), !p.livrables.contains(where: \.isPublishable) {
            throw CoverageError(
                .invalid,
                "a project cannot be 'disponible' without a deliverable to publish (a livrable with a tileset or a diffusion url)"
            )
        }
        if p.etapes.contains(where: { $0.statut == .disponible }) {
            for (i, l) in p.livrables.enumerated() {
                guard let t = l.tileset, !t.isEmpty, !tilesetExists(t) else { continue }
                throw CoverageError(
                    .invalid,
                    "a 'disponible' project publishes its deliverables: livrables[\(i)].tileset '\(t)' is not a tileset of this server"
                )
            }
        }
        if p.perimetres.isEmpty && p.geometrie == nil {
            throw CoverageError(.invalid, "a project needs a perimeter: perimetres (territory codes) or geometrie")
        }
        for ref in p.perimetres {
            let parts = ref.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, Territory.Level(rawValue: String(parts[0])) != nil else {
                throw CoverageError(
                    .invalid, "perimetres: '\(ref)' is not commune:<INSEE>, epci:<SIREN> or departement:<code>")
            }
            guard territoryExists(ref) else {
                throw CoverageError(.invalid, "perimetres: unknown territory '\(ref)' (import it first)")
            }
        }
        for (i, l) in p.livrables.enumerated() where l.nom.isEmpty {
            throw CoverageError(.invalid, "livrables[\(i)].nom must not be empty")
        }
    }

    /// A readable message for a JSON decoding failure (unknown status, wrong type, missing field).
    public static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "malformed JSON: \(error)" }
        func path(_ c: [CodingKey]) -> String {
            c.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(
                in: CharacterSet(charactersIn: "."))
        }
        switch e {
        case .dataCorrupted(let c):
            let field = path(c.codingPath)
            if field.hasSuffix("statut") {
                return
                    "\(field): unknown status (expected one of \(Statut.allCases.map(\.rawValue).joined(separator: ", ")))"
            }
            if field == "nature" { return "nature must be one of raster, vecteur, mixte" }
            if field == "regime" { return "regime must be one of production, maj, anticipation" }
            return field.isEmpty ? "malformed JSON" : "\(field): invalid value"
        case .keyNotFound(let k, let c):
            return "missing field \(path(c.codingPath + [k]))"
        case .typeMismatch(let t, let c):
            return "\(path(c.codingPath)): expected \(t)"
        case .valueNotFound(_, let c):
            return "\(path(c.codingPath)): missing value"
        @unknown default:
            return "malformed JSON"
        }
    }
}
