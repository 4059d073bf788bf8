# mvc's Blender worker: renders views of GLB objects, one job per line.
#
#   blender -b --factory-startup -noaudio --python-exit-code 1 --python render.py
#
# Reads one JSON job per line on stdin:
#   {"object": ID, "glb": PATH, "out": DIR, "resolution": 224, "engine": "CYCLES", "samples": 32,
#    "lights": "study" | "four-sun", "persistent_data": true,
#    "views": [{"id": ID, "azimuth": DEG, "polar": DEG, "distance": D, "fov": DEG}, ...]}
# renders every view to DIR/ID.png (RGBA, transparent background), and answers with one
# line on stdout starting with "MVC-RESULT " and a JSON object: {"ok": true, "views": [ID,
# ...], "seconds": {"import": S, "render": S}, "produced_by": {"blender": VERSION,
# "view_transform": ..., "look": ..., ...}} or {"ok": false, "error": TEXT}. Blender's own chatter on stdout is ignored by mvc.
#
# Conventions shared with mvc's built-in renderer (src/render/camera.rs, scene.rs): world Z
# up; the object normalised (all roots under one empty, longest bounding-box side 1,
# bounding-box centre at the origin); a camera at azimuth a and polar angle p (from +Z) sits
# at (d sin p cos a, d sin p sin a, d cos p), looks at the origin, +Z up in the image.

import json
import math
import os
import sys
import time
import traceback

# Debian's Blender 3.4 glTF importer uses np.bool, which numpy 1.24 removed.
import numpy

if not hasattr(numpy, "bool"):
    numpy.bool = bool

import bpy  # noqa: E402
from mathutils import Matrix, Vector  # noqa: E402

# Blender's glTF importer walks the node tree recursively, so at Python's default limit of
# 1,000 frames a valid model whose hierarchy is a few hundred nodes deep failed with
# RecursionError. Python 3.11 keeps pure-Python frames off the C stack: a chain of 100,000
# nodes imports at this limit (slowly: the stage's `timeout` bounds it).
sys.setrecursionlimit(1_000_000)


# Blender's startup scene's World (startup.blend, 2.8 to 3.x): a grey background, colour
# 0.050876 in every channel, strength 1. The study's script rendered in that scene, so this
# light reaches every surface the area light misses; film transparency hides it from the
# background only.
STARTUP_WORLD_COLOUR = 0.050876
STARTUP_WORLD_STRENGTH = 1.0


def reset():
    # An empty factory scene has no World (the area light alone left sides black): give it
    # the startup scene's.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    world = bpy.data.worlds.new("World")
    world.color = (STARTUP_WORLD_COLOUR,) * 3
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (STARTUP_WORLD_COLOUR,) * 3 + (1.0,)
    background.inputs["Strength"].default_value = STARTUP_WORLD_STRENGTH
    bpy.context.scene.world = world


def normalise():
    """Parent every root to one empty, scale the longest side to 1, centre the box."""
    scene = bpy.context.scene
    roots = [o for o in scene.objects if o.parent is None]
    pivot = bpy.data.objects.new("mvc_pivot", None)
    scene.collection.objects.link(pivot)
    for o in roots:
        world = o.matrix_world.copy()
        o.parent = pivot
        o.matrix_world = world
    bpy.context.view_layer.update()
    lo = Vector((math.inf,) * 3)
    hi = Vector((-math.inf,) * 3)
    meshes = [o for o in scene.objects if o.type == "MESH"]
    if not meshes:
        raise ValueError("the scene has no meshes to render")
    for o in meshes:
        for corner in o.bound_box:
            p = o.matrix_world @ Vector(corner)
            for k in range(3):
                lo[k] = min(lo[k], p[k])
                hi[k] = max(hi[k], p[k])
    for o in meshes:
        co = numpy.empty(len(o.data.vertices) * 3)
        o.data.vertices.foreach_get("co", co)
        if not numpy.isfinite(co).all():
            raise ValueError("the model has coordinates that are not finite numbers")
    if not all(math.isfinite(v) for v in list(lo) + list(hi)):
        raise ValueError("the model has coordinates that are not finite numbers")
    side = max(hi - lo)
    scale = 1.0 / side if side > 0 else 1.0
    centre = (lo + hi) / 2
    pivot.matrix_world = Matrix.Scale(scale, 4) @ Matrix.Translation(-centre) @ pivot.matrix_world
    bpy.context.view_layer.update()


def add_lights(kind):
    scene = bpy.context.scene
    if kind == "study":
        # The study's single area light: 30000 W at (0, 0, 0.5), object scale 100.
        light = bpy.data.lights.new("mvc_area", "AREA")
        light.energy = 30000
        obj = bpy.data.objects.new("mvc_area", light)
        obj.location = (0, 0, 0.5)
        obj.scale = (100, 100, 100)
        scene.collection.objects.link(obj)
        return
    # four-sun: key, fill, rim and bottom, pointing at the origin from these directions.
    for name, direction, strength in [
        ("key", (1.0, -1.0, 1.2), 3.0),
        ("fill", (-1.0, -0.4, 0.5), 1.4),
        ("rim", (0.0, 1.0, 0.8), 1.8),
        ("bottom", (0.0, 0.0, -1.0), 0.8),
    ]:
        light = bpy.data.lights.new("mvc_" + name, "SUN")
        light.energy = strength
        obj = bpy.data.objects.new("mvc_" + name, light)
        # A sun shines down its local -Z: turn -Z to point from the direction to the origin.
        obj.rotation_euler = (-Vector(direction)).to_track_quat("-Z", "Y").to_euler()
        scene.collection.objects.link(obj)


def camera_matrix(view):
    a = math.radians(view["azimuth"])
    p = math.radians(view["polar"])
    d = view["distance"]
    c = Vector((d * math.sin(p) * math.cos(a), d * math.sin(p) * math.sin(a), d * math.cos(p)))
    back = c.normalized()
    right = Vector((-math.sin(a), math.cos(a), 0.0))
    up = back.cross(right)
    m = Matrix.Identity(4)
    for r in range(3):
        m[r][0] = right[r]
        m[r][1] = up[r]
        m[r][2] = back[r]
        m[r][3] = c[r]
    return m


def configure(job):
    scene = bpy.context.scene
    render = scene.render
    render.engine = job.get("engine", "CYCLES")
    if render.engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = int(job.get("samples", 32))
        # Debian's build has no OpenImageDenoise.
        scene.cycles.use_denoising = False
    elif render.engine == "BLENDER_EEVEE":
        scene.eevee.taa_render_samples = int(job.get("samples", 64))
    render.film_transparent = True
    # Keep Cycles' scene data (BVH, shaders, images) between the views of an object: only
    # the camera moves, so each view after the first skips rebuilding them. The pixels are
    # the same (mvc's render benchmark compares them); 36 views render about 1.2x faster.
    render.use_persistent_data = bool(job.get("persistent_data", True))
    render.resolution_x = job["resolution"]
    render.resolution_y = job["resolution"]
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"
    render.image_settings.color_depth = "8"
    cam_data = bpy.data.cameras.new("mvc_camera")
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.clip_start = 0.01
    cam = bpy.data.objects.new("mvc_camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def run(job):
    """Renders a job's views; returns their ids and the seconds spent importing and
    rendering (what mvc's benchmark compares its own overhead with)."""
    # Test hook: die like a crashing Blender on this object (mvc's tests of the pool).
    if os.environ.get("MVC_TEST_CRASH_ON") == job.get("object"):
        os._exit(134)
    started = time.perf_counter()
    reset()
    # As the study imported: vertices that share a position are merged (one shading
    # difference on models whose normals are split).
    bpy.ops.import_scene.gltf(filepath=job["glb"], merge_vertices=True)
    normalise()
    add_lights(job.get("lights", "study"))
    cam = configure(job)
    imported = time.perf_counter()
    done = []
    for view in job["views"]:
        cam.data.angle = math.radians(view["fov"])
        cam.matrix_world = camera_matrix(view)
        bpy.context.scene.render.filepath = "%s/%s.png" % (job["out"], view["id"])
        bpy.ops.render.render(write_still=True)
        done.append(view["id"])
    rendered = time.perf_counter()
    return done, {"import": imported - started, "render": rendered - imported}


def produced_by():
    """What made the pixels, for every view's record: Blender's version and its colour
    management (the view transform, Filmic by default in 3.x, changes every pixel)."""
    view = bpy.context.scene.view_settings
    return {
        "blender": bpy.app.version_string,
        "engine": bpy.context.scene.render.engine,
        "view_transform": view.view_transform,
        "look": view.look,
        "exposure": view.exposure,
        "gamma": view.gamma,
        "display_device": bpy.context.scene.display_settings.display_device,
    }


def answer(obj):
    sys.stdout.write("MVC-RESULT " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    answer({"ok": True, "ready": True, "blender": bpy.app.version_string})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            job = json.loads(line)
            views, seconds = run(job)
            answer({"ok": True, "views": views, "seconds": seconds, "produced_by": produced_by()})
        except Exception as e:  # one object's failure must not end the worker
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
            answer({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})


main()
