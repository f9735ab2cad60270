import Foundation
import GeoGrid
import Pyramid
import Serving

/// The WMTS 1.0.0 capabilities document for every pyramid of the catalog.
enum WMTSCapabilities {
    /// One WMTS layer: a tileset, or a layer of vintages (its stacked view, with a Time dimension).
    struct Entry {
        var id: String
        var title: String
        var abstract: String
        var attribution: String?
        var format: TileFormat
        /// Newest first; nil for a tileset.
        var vintages: [String]?
        var grids: [Grid]
    }

    /// One grid of a layer: the data's extent and limits there.
    struct Grid {
        var tms: TileMatrixSet
        var bounds: BoundingBox
        var wgs84: BoundingBox
        var minZoom: Int
        var maxZoom: Int
        var limits: [PyramidManifest.LevelLimits]
    }

    static func document(pyramids: [ServedPyramid], layers: [String: ServedLayer] = [:], baseURL: String) -> String {
        var x = """
            <?xml version="1.0" encoding="UTF-8"?>
            <Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" \
            xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
            xmlns:gml="http://www.opengis.net/gml" \
            xsi:schemaLocation="http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd" \
            version="1.0.0">
              <ows:ServiceIdentification>
                <ows:Title>Dallage</ows:Title>
                <ows:Abstract>Orthophotography tiles (PCRS image and orthophotos) in Lambert-93 and WebMercator.</ows:Abstract>
                <ows:ServiceType>OGC WMTS</ows:ServiceType>
                <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
              </ows:ServiceIdentification>
              <ows:OperationsMetadata>

            """
        for op in ["GetCapabilities", "GetTile"] {
            x += """
                    <ows:Operation name="\(op)">
                      <ows:DCP><ows:HTTP>
                        <ows:Get xlink:href="\(XML.escape(baseURL))/wmts?">
                          <ows:Constraint name="GetEncoding"><ows:AllowedValues><ows:Value>KVP</ows:Value></ows:AllowedValues></ows:Constraint>
                        </ows:Get>
                        <ows:Get xlink:href="\(XML.escape(baseURL))/wmts/1.0.0/">
                          <ows:Constraint name="GetEncoding"><ows:AllowedValues><ows:Value>RESTful</ows:Value></ows:AllowedValues></ows:Constraint>
                        </ows:Get>
                      </ows:HTTP></ows:DCP>
                    </ows:Operation>

                """
        }
        x += "  </ows:OperationsMetadata>\n  <Contents>\n"
        var sets: [String: (TileMatrixSet, ClosedRange<Int>)] = [:]
        // One layer per tileset, linked to each grid it was tiled for; then one per layer of
        // vintages, its stacked view, with a Time dimension.
        let byTileset = Dictionary(grouping: pyramids, by: \.tileset)
        var entries: [Entry] = byTileset.keys.sorted().compactMap { tileset in
            guard let group = byTileset[tileset]?.sorted(by: { $0.grid < $1.grid }), let m = group.first?.manifest
            else { return nil }
            return Entry(
                id: tileset, title: m.title ?? tileset, abstract: m.abstract ?? "", attribution: m.attribution,
                format: m.format, vintages: nil,
                grids: group.map { p in
                    Grid(
                        tms: p.manifest.tileMatrixSet, bounds: p.manifest.bounds, wgs84: p.manifest.wgs84Bounds,
                        minZoom: p.manifest.minZoom, maxZoom: p.manifest.maxZoom, limits: p.manifest.levels)
                })
        }
        for layer in layers.values.sorted(by: { $0.id < $1.id }) {
            let stacks = layer.stacks.values.sorted { $0.grid < $1.grid }
            guard let m = stacks.first?.newest.manifest else { continue }
            let names = layer.vintages.map(\.vintage.text).joined(separator: ", ")
            entries.append(
                Entry(
                    id: layer.id, title: layer.title,
                    abstract: "Vintages \(names); latest: the newest published vintage wherever it has data.",
                    attribution: m.attribution, format: m.format, vintages: layer.vintages.map(\.vintage.text),
                    grids: stacks.map { s in
                        Grid(
                            tms: s.newest.manifest.tileMatrixSet,
                            bounds: s.pyramids.dropFirst().reduce(s.newest.manifest.bounds) {
                                $0.union($1.manifest.bounds)
                            },
                            wgs84: s.wgs84Bounds, minZoom: s.minZoom, maxZoom: s.maxZoom,
                            limits: (s.minZoom...s.maxZoom).compactMap { s.level($0)?.limits })
                    }))
        }
        entries.sort { $0.id < $1.id }
        for e in entries {
            let w = e.grids.dropFirst().reduce(e.grids[0].wgs84) { $0.union($1.wgs84) }
            x += """
                    <Layer>
                      <ows:Title>\(XML.escape(e.title))</ows:Title>
                      <ows:Abstract>\(XML.escape(e.abstract))</ows:Abstract>
                      <ows:WGS84BoundingBox>
                        <ows:LowerCorner>\(w.minX) \(w.minY)</ows:LowerCorner>
                        <ows:UpperCorner>\(w.maxX) \(w.maxY)</ows:UpperCorner>
                      </ows:WGS84BoundingBox>
                      <ows:Identifier>\(XML.escape(e.id))</ows:Identifier>

                """
            // The data's own extent in each grid's CRS: clients (GDAL's WMTS driver) then ask only
            // for tiles inside the limits, instead of the larger reprojection of the WGS84 box.
            for g in e.grids {
                guard let epsg = g.tms.epsg else { continue }
                let b = g.bounds
                x += """
                          <ows:BoundingBox crs="urn:ogc:def:crs:EPSG::\(epsg)">
                            <ows:LowerCorner>\(b.minX) \(b.minY)</ows:LowerCorner>
                            <ows:UpperCorner>\(b.maxX) \(b.maxY)</ows:UpperCorner>
                          </ows:BoundingBox>

                    """
            }
            if let a = e.attribution, !a.isEmpty {
                x += "      <ows:Metadata xlink:title=\"attribution\" xlink:href=\"\(XML.escape(a))\"/>\n"
            }
            x +=
                "      <Style isDefault=\"true\"><ows:Title>Default</ows:Title><ows:Identifier>normal</ows:Identifier></Style>\n"
            let native: TileEncoding = e.format == .jpeg ? .jpeg : .webp
            let formats = [native] + TileEncoding.allCases.filter { $0 != native }
            for f in formats { x += "      <Format>\(f.mimeType)</Format>\n" }
            if let vintages = e.vintages {
                // The vintages, newest first, and `latest`, the stacked view, by default.
                x +=
                    "      <Dimension>\n        <ows:Identifier>Time</ows:Identifier>\n        <ows:UOM>ISO8601</ows:UOM>\n"
                x +=
                    "        <Default>latest</Default>\n        <Current>true</Current>\n        <Value>latest</Value>\n"
                for v in vintages { x += "        <Value>\(XML.escape(v))</Value>\n" }
                x += "      </Dimension>\n"
            }
            for g in e.grids {
                // The full grid, and IGN's level-limited name when the pyramid does not span it.
                var links = [(g.tms.id, 0...g.tms.maxZoom)]
                if g.minZoom != 0 || g.maxZoom != g.tms.maxZoom {
                    links.append(("\(g.tms.id)_\(g.minZoom)_\(g.maxZoom)", g.minZoom...g.maxZoom))
                }
                for (id, levels) in links {
                    sets[id] = (g.tms, levels)
                    x += "      <TileMatrixSetLink>\n        <TileMatrixSet>\(XML.escape(id))</TileMatrixSet>\n"
                    x += "        <TileMatrixSetLimits>\n"
                    for l in g.limits where levels.contains(l.z) {
                        x += """
                                      <TileMatrixLimits><TileMatrix>\(l.z)</TileMatrix><MinTileRow>\(l.minRow)</MinTileRow>\
                            <MaxTileRow>\(l.maxRow)</MaxTileRow><MinTileCol>\(l.minCol)</MinTileCol><MaxTileCol>\(l.maxCol)</MaxTileCol></TileMatrixLimits>

                            """
                    }
                    x += "        </TileMatrixSetLimits>\n      </TileMatrixSetLink>\n"
                }
            }
            let time = e.vintages == nil ? "" : "{Time}/"
            for f in formats {
                x += """
                          <ResourceURL format="\(f.mimeType)" resourceType="tile" \
                    template="\(XML.escape(baseURL))/wmts/1.0.0/\(XML.escape(e.id))/{Style}/\(time){TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.\(f.fileExtension)"/>

                    """
            }
            x += "    </Layer>\n"
        }
        for (id, (tms, levels)) in sets.sorted(by: { $0.key < $1.key }) {
            x += "    <TileMatrixSet>\n      <ows:Identifier>\(XML.escape(id))</ows:Identifier>\n"
            if let epsg = tms.epsg { x += "      <ows:SupportedCRS>urn:ogc:def:crs:EPSG::\(epsg)</ows:SupportedCRS>\n" }
            if tms.id == "PM" && levels.lowerBound == 0 {
                x += "      <WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>\n"
            }
            for z in levels {
                let t = tms.tileMatrices[z]
                x += """
                          <TileMatrix>
                            <ows:Identifier>\(z)</ows:Identifier>
                            <ScaleDenominator>\(t.scaleDenominator)</ScaleDenominator>
                            <TopLeftCorner>\(t.originX) \(t.originY)</TopLeftCorner>
                            <TileWidth>\(t.tileWidth)</TileWidth>
                            <TileHeight>\(t.tileHeight)</TileHeight>
                            <MatrixWidth>\(t.matrixWidth)</MatrixWidth>
                            <MatrixHeight>\(t.matrixHeight)</MatrixHeight>
                          </TileMatrix>

                    """
            }
            x += "    </TileMatrixSet>\n"
        }
        x += "  </Contents>\n"
        x += "  <ServiceMetadataURL xlink:href=\"\(XML.escape(baseURL))/wmts/1.0.0/WMTSCapabilities.xml\"/>\n"
        x += "</Capabilities>\n"
        return x
    }
}
