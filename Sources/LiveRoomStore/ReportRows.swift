import Foundation
import LiveRoomMessages
import NIOCore

/// The stored form of a group of audience reports: fixed-width fields in a ByteBuffer. Written
/// on every flush at hundreds of thousands of reports a second, where encoding protobuf
/// through the C library costs more than the database insert. Connector and room ids are the
/// row's columns, not repeated per report.
enum ReportRows {
    static let version: UInt8 = 1

    static func encode(_ reports: [AudienceReport]) -> Data {
        var b = ByteBufferAllocator().buffer(capacity: 1 + reports.count * 96)
        b.writeInteger(version)
        for r in reports {
            b.writeInteger(r.sequence)
            b.writeMultipleIntegers(r.reportedAtMs, r.viewersOnline, r.newViewers, r.comments)
            b.writeMultipleIntegers(r.likes, r.interactions, r.gifts, r.itemsSold)
            if let s = r.sales {
                b.writeInteger(UInt8(1))
                b.writeInteger(s.minorUnits)
                let currency = s.currency.utf8.prefix(255)
                b.writeInteger(UInt8(currency.count))
                b.writeBytes(currency)
            } else {
                b.writeInteger(UInt8(0))
            }
        }
        return Data(b.readableBytesView)
    }

    struct Corrupt: Error, CustomStringConvertible {
        var description: String
    }

    static func decode(_ data: Data, connectorId: String, roomId: String) throws -> [AudienceReport] {
        var b = ByteBuffer(bytes: data)
        guard b.readInteger(as: UInt8.self) == version else { throw Corrupt(description: "audience rows of an unknown version") }
        var out: [AudienceReport] = []
        while b.readableBytes > 0 {
            guard let seq = b.readInteger(as: UInt64.self) else { throw Corrupt(description: "audience row truncated") }
            var v: [Int64] = []
            v.reserveCapacity(8)
            for _ in 0..<8 {
                guard let x = b.readInteger(as: Int64.self) else { throw Corrupt(description: "audience row truncated") }
                v.append(x)
            }
            var r = AudienceReport()
            r.connectorId = connectorId
            r.roomId = roomId
            r.sequence = seq
            (r.reportedAtMs, r.viewersOnline, r.newViewers, r.comments) = (v[0], v[1], v[2], v[3])
            (r.likes, r.interactions, r.gifts, r.itemsSold) = (v[4], v[5], v[6], v[7])
            guard let hasSales = b.readInteger(as: UInt8.self) else { throw Corrupt(description: "audience row truncated") }
            if hasSales == 1 {
                guard let minor = b.readInteger(as: Int64.self), let n = b.readInteger(as: UInt8.self),
                    let currency = b.readString(length: Int(n))
                else { throw Corrupt(description: "audience row truncated") }
                var m = Money()
                m.minorUnits = minor
                m.currency = currency
                r.sales = m
            }
            out.append(r)
        }
        return out
    }
}
