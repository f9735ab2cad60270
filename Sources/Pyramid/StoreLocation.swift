/// Where a store is, as a user names it (`--store`, `DALLAGE_STORE`, `store:`): a local folder, or a
/// bucket and a key prefix on an S3-compatible object store (`s3://bucket/prefix`).
///
/// A string that looks like a URL of another scheme (`http://…`, `gs://…`, `file:…`, or `s3:` without
/// its two slashes) is refused rather than taken for a folder name: `--store s3:/bars` must not
/// quietly create a local folder named `s3:`. A folder whose name really starts like a scheme is
/// written `./name`.
public enum StoreLocation: Sendable, Hashable, CustomStringConvertible {
    /// A local folder, as written.
    case folder(String)
    /// A bucket and a key prefix: no leading or trailing `/`, empty for the bucket's root.
    case s3(bucket: String, prefix: String)

    /// Parses a store as the user wrote it.
    public init(parsing text: String) throws(StoreLocationError) {
        guard !text.isEmpty else {
            throw StoreLocationError(text: text, reason: "a store is a folder or s3://bucket/prefix")
        }
        guard let scheme = Self.scheme(of: text) else {
            self = .folder(text)
            return
        }
        let rest = text.dropFirst(scheme.count + 1)
        guard scheme.lowercased() == "s3" else {
            let url = rest.hasPrefix("//")
            throw StoreLocationError(
                text: text,
                reason:
                    "'\(scheme):\(url ? "//" : "")' is not a store scheme: a store is a local folder or s3://bucket/prefix"
                    + (url ? "" : " (a folder whose name has a colon is written ./\(text))"))
        }
        guard rest.hasPrefix("//") else {
            throw StoreLocationError(text: text, reason: "an S3 store is written s3://bucket/prefix")
        }
        let path = rest.dropFirst(2)
        if path.contains(where: { $0 == "?" || $0 == "#" }) {
            throw StoreLocationError(text: text, reason: "an S3 store URL takes no query nor fragment")
        }
        var segments = path.split(separator: "/", omittingEmptySubsequences: false)
        let bucket = segments.isEmpty ? "" : String(segments.removeFirst())
        if let reason = Self.bucketNameProblem(bucket) {
            throw StoreLocationError(text: text, reason: reason)
        }
        // `s3://bucket/` and `s3://bucket/prefix/` name the same store as without the slash.
        if segments.last == "" { segments.removeLast() }
        for segment in segments {
            if segment.isEmpty {
                throw StoreLocationError(text: text, reason: "the prefix has an empty segment ('//')")
            }
            if segment == "." || segment == ".." {
                throw StoreLocationError(text: text, reason: "the prefix has a '\(segment)' segment")
            }
        }
        self = .s3(bucket: bucket, prefix: segments.joined(separator: "/"))
    }

    /// The store as a user would write it again.
    public var description: String {
        switch self {
        case .folder(let path): path
        case .s3(let bucket, let prefix): prefix.isEmpty ? "s3://\(bucket)" : "s3://\(bucket)/\(prefix)"
        }
    }

    /// The URL scheme a string starts with (`http` of `http://…`, `file` of `file:/x`), nil when it
    /// does not start like a URL. One letter followed by `:` is not a scheme: it reads as a drive.
    static func scheme(of text: String) -> Substring? {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let scheme = text[..<colon]
        guard scheme.count >= 2, let first = scheme.first, first.isASCII, first.isLetter else { return nil }
        let allowed = scheme.allSatisfy { c in
            c.isASCII && (c.isLetter || c.isNumber || c == "+" || c == "-" || c == ".")
        }
        return allowed ? scheme : nil
    }

    /// Why a bucket name cannot be one, nil when it can: S3's naming rules (3 to 63 lowercase
    /// letters, digits, dots and hyphens, starting and ending with a letter or a digit).
    static func bucketNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "no bucket: an S3 store is written s3://bucket/prefix" }
        guard (3...63).contains(name.count) else { return "bucket name '\(name)' is not 3 to 63 characters long" }
        let valid = name.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "-")
        }
        guard valid else { return "bucket name '\(name)' may hold only lowercase letters, digits, '.' and '-'" }
        let ends = [name.utf8.first, name.utf8.last].allSatisfy { c in
            guard let c else { return false }
            return c != UInt8(ascii: ".") && c != UInt8(ascii: "-")
        }
        guard ends else { return "bucket name '\(name)' must start and end with a letter or a digit" }
        return nil
    }
}

/// A store name that is neither a folder nor an `s3://` URL, and why.
public struct StoreLocationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The store as written.
    public var text: String
    /// What is wrong with it, for a person.
    public var reason: String

    /// `store 'TEXT': REASON`, one line.
    public var description: String { "store '\(text)': \(reason)" }
}
