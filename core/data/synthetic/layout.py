"""Where everything is, and what changes: the layout both dates share (ground, roads, the
development site beside a road, sometimes with a new access road, and established settlements
usually aligned with a road) and the choice of which buildings are new or gone, spent from a
pixel budget starting at the development site and spreading to the nearest settlements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .buildings import GONE, NEW, Building, box_scatter, gaussian_scatter, place_cluster
from .ground import make_ground
from .roads import Road, asphalt_colour, make_roads, road_layers, segment_coverage


@dataclass(frozen=True)
class Layout:
    """Scene content shared by both dates.

    ``ground`` float32 [3, H, W], ``veg`` float32 [H, W] vegetation fraction 0..1,
    ``asphalt`` float32 [3, H, W] road surface colour, ``road_pre`` / ``road_post`` float32
    [H, W] road coverage 0..1, ``buildings`` every building of either date, ``centres`` the
    (row, col) centre of each building cluster (0 = the development site).
    """

    ground: np.ndarray
    veg: np.ndarray
    asphalt: np.ndarray
    road_pre: np.ndarray
    road_post: np.ndarray
    buildings: list
    centres: dict


def _cluster_angle(rng: np.random.Generator, roads: Sequence[Road]) -> float:
    """Orientation of a settlement: usually aligned with one of the roads."""
    if roads and rng.random() < 0.8:
        return roads[int(rng.integers(len(roads)))].angle + rng.normal(0.0, 0.03)
    return rng.uniform(0.0, math.pi)


def _near_road(
    rng: np.random.Generator, road: Road, distance: float, height: int, width: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """A point ``distance`` px beside ``road`` inside the scene, and the road point opposite."""
    cos, sin = math.cos(road.angle), math.sin(road.angle)
    best = ((height / 2, width / 2), (height / 2, width / 2))
    for _ in range(30):
        py, pxx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        s = pxx * cos + py * sin
        t_centre = road.offset + road.amp * math.sin(2 * math.pi * s / road.period + road.phase)
        t = t_centre + rng.choice([-1.0, 1.0]) * distance
        site = (s * sin + t * cos, s * cos - t * sin)
        best = (site, (s * sin + t_centre * cos, s * cos - t_centre * sin))
        if 0.15 * height <= site[0] <= 0.85 * height and 0.15 * width <= site[1] <= 0.85 * width:
            break
    return best


def make_layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    px: float,
    density: float,
    change_fraction: float,
    sun: tuple[float, float],
) -> Layout:
    """Ground, roads and buildings (states set later by ``assign_changes``)."""
    ground, veg = make_ground(rng, height, width, px, sun)
    roads = make_roads(rng, height, width, px)
    road_pre, marks, occupied = road_layers(roads, height, width, px, margin=3.0 / px)
    asphalt = asphalt_colour(rng, height, width, px, marks)
    shadow_ratio = rng.uniform(0.3, 0.5)
    cast = (sun[0] * shadow_ratio, sun[1] * shadow_ratio)  # shadow offset per unit height
    budget = change_fraction * height * width

    # Development (cluster 0): a 2 x 2 block of new buildings beside a road, sometimes with a
    # new access road into it.
    road = roads[int(rng.integers(len(roads)))]
    extent = min(height, width)
    half_along = min(rng.uniform(50.0, 75.0) / px, 0.3 * extent)
    half_across = min(rng.uniform(40.0, 60.0) / px, 0.25 * extent)
    site, foot = _near_road(rng, road, half_across + road.half_width + 8.0 / px, height, width)
    road_post = road_pre
    if change_fraction >= 0.02 and rng.random() < 0.6:
        spur = segment_coverage(site, foot, 2.5 / px, height, width)
        road_post = np.maximum(road_pre, spur)
        occupied |= segment_coverage(site, foot, 2.5 / px + 3.0 / px, height, width) > 0
    buildings = _develop(
        rng,
        occupied,
        site,
        foot,
        road.angle,
        (half_along, half_across),
        0.8 * budget / 1.3,
        cast,
        px,
    )
    centres = {0: site}

    # Established settlements.
    roof_target = density * height * width
    roof_area = 0
    cluster = 1
    empty = 0
    while roof_area < roof_target and cluster <= 60 and empty < 8:
        sigma = rng.uniform(15.0, 32.0) / px
        target = min(roof_target - roof_area, 0.25 * math.pi * (2 * sigma) ** 2)
        centres[cluster] = (rng.uniform(0, height), rng.uniform(0, width))
        placed = place_cluster(
            rng,
            occupied,
            gaussian_scatter(centres[cluster], sigma),
            _cluster_angle(rng, roads),
            target,
            0.12,
            cast,
            px,
            cluster,
        )
        buildings += placed
        roof_area += sum(int(b.roof.sum()) for b in placed)
        empty = 0 if placed else empty + 1
        cluster += 1
    return Layout(ground, veg, asphalt, road_pre, road_post, buildings, centres)


def _develop(
    rng: np.random.Generator,
    occupied: np.ndarray,
    site: tuple[float, float],
    foot: tuple[float, float],
    angle: float,
    half: tuple[float, float],
    roof_target: float,
    cast: tuple[float, float],
    px: float,
) -> list[Building]:
    """Fill up to four boxes (2 x 2, first row at ``site`` by the road) with new buildings.

    ``foot`` is the road point opposite ``site``; the second row lies further from the road.
    """
    height, width = occupied.shape
    along = (math.sin(angle), math.cos(angle))
    away = (site[0] - foot[0], site[1] - foot[1])
    norm = math.hypot(*away) or 1.0
    away = (away[0] / norm, away[1] / norm)
    step_along = 2 * half[0] + 8.0 / px
    step_away = 2 * half[1] + 8.0 / px
    side = 1.0 if rng.random() < 0.5 else -1.0
    buildings: list[Building] = []
    roof_area = 0
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        centre = (
            site[0] + side * i * step_along * along[0] + j * step_away * away[0],
            site[1] + side * i * step_along * along[1] + j * step_away * away[1],
        )
        if roof_area >= roof_target or not (0 <= centre[0] < height and 0 <= centre[1] < width):
            continue
        scatter = box_scatter(centre, angle, half[0], half[1])
        placed = place_cluster(
            rng, occupied, scatter, angle, roof_target - roof_area, 0.4, cast, px, 0
        )
        buildings += placed
        roof_area += sum(int(b.roof.sum()) for b in placed)
    return buildings


def assign_changes(
    rng: np.random.Generator,
    buildings: Sequence[Building],
    centres: dict[int, tuple[float, float]],
    budget: float,
) -> None:
    """Mark buildings "new" or "gone" until about ``budget`` px changed, clustered in space.

    The development site (cluster 0) is built first; then settlements nearest to it get infill
    and demolitions, so that change stays concentrated in one part of the scene.
    """
    by_cluster: dict[int, list[Building]] = {}
    for building in buildings:
        by_cluster.setdefault(building.cluster, []).append(building)
    site = centres[0]
    distance = {
        c: math.hypot(centres[c][0] - site[0], centres[c][1] - site[1]) * rng.uniform(1.0, 1.3)
        for c in sorted(by_cluster)
    }
    order = sorted(by_cluster, key=lambda c: (c != 0, distance[c]))
    spent = 0.0
    for cluster in order:
        p_change = 1.0 if cluster == 0 else rng.uniform(0.5, 0.9)
        p_new = 1.0 if cluster == 0 else rng.uniform(0.3, 0.7)
        for building in by_cluster[cluster]:
            if spent >= budget:
                return
            if rng.random() < p_change:
                building.state = NEW if rng.random() < p_new else GONE
                spent += building.area
