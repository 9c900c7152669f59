// A VRM avatar (VRM 0.x or 1.0) with three.js and @pixiv/three-vrm: loaded from the server
// (`serve --avatar FILE.vrm`), a dropped file or ?avatar=URL; expressions and neck/head bones come
// from AvatarMapper (avatar_map.js). The npm packages are served under /vendor/ (index.html's
// import map); this module is imported only when an avatar is shown.
import * as THREE from 'three';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { VRMLoaderPlugin, VRMUtils } from '@pixiv/three-vrm';

const EXPRESSIONS = ['aa', 'ih', 'ou', 'ee', 'oh', 'blink', 'blinkLeft', 'blinkRight'];

export class VrmView {
  constructor(canvas, { antialias = true } = {}) {
    this.canvas = canvas;
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias, preserveDrawingBuffer: true });
    this.renderer.setClearColor(0x1c1f26, 1);
    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(22, 1, 0.05, 50);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x40444c, 1.6));
    const sun = new THREE.DirectionalLight(0xffffff, 1.8);
    sun.position.set(0.6, 1.2, 2.0);
    this.scene.add(sun);
    this.vrm = null;
    this.values = {};
  }

  // source: a URL (string) or the bytes of a .vrm (ArrayBuffer).
  async load(source) {
    const loader = new GLTFLoader();
    loader.register((parser) => new VRMLoaderPlugin(parser));
    const gltf = typeof source === 'string' ? await loader.loadAsync(source) : await loader.parseAsync(source, '');
    const vrm = gltf.userData.vrm;
    if (!vrm) throw new Error('the file has no VRM extension (VRM 0.x or VRMC_vrm 1.0)');
    VRMUtils.rotateVRM0(vrm);  // VRM 0.x faces -Z: turn it to face the camera like VRM 1.0
    if (this.vrm) { this.scene.remove(this.vrm.scene); VRMUtils.deepDispose(this.vrm.scene); }
    this.scene.add(vrm.scene);
    this.vrm = vrm;
    this.available = EXPRESSIONS.filter((n) => vrm.expressionManager && vrm.expressionManager.getExpression(n));
    vrm.scene.updateMatrixWorld(true);
    // Frame the face: the head bone plus a typical head's half height, seen from 1.2 m in front.
    const head = vrm.humanoid.getRawBoneNode('head') || vrm.scene;
    const target = new THREE.Vector3();
    head.getWorldPosition(target);
    target.y += 0.07;
    this.camera.position.set(target.x, target.y, target.z + 1.2);
    this.camera.lookAt(target);
    return { expressions: this.available, name: (vrm.meta && (vrm.meta.name || vrm.meta.title)) || 'VRM' };
  }

  // c: AvatarMapper.controls(...) — expressions by VRM 1.0 name, neck and head axis-angle
  // (FLAME's frame, which is three-vrm's normalised bone frame: x = the avatar's left, y up, z forward).
  apply(c) {
    if (!this.vrm) return;
    const em = this.vrm.expressionManager;
    for (const name of this.available) {
      const v = c.expressions[name] ?? 0;
      em.setValue(name, v);
      this.values[name] = v;
    }
    const setBone = (bone, rot) => {
      const node = this.vrm.humanoid.getNormalizedBoneNode(bone);
      if (!node) return;
      const angle = Math.hypot(rot[0], rot[1], rot[2]);
      if (angle < 1e-9) node.quaternion.identity();
      else node.quaternion.setFromAxisAngle(new THREE.Vector3(rot[0] / angle, rot[1] / angle, rot[2] / angle), angle);
    };
    setBone('neck', c.neck);
    setBone('head', c.head);
  }

  render(dt) {
    const w = Math.round(this.canvas.clientWidth * devicePixelRatio), h = Math.round(this.canvas.clientHeight * devicePixelRatio);
    if (w > 0 && h > 0 && (this.canvas.width !== w || this.canvas.height !== h)) {
      this.renderer.setSize(w, h, false);
      this.camera.aspect = w / h;
      this.camera.updateProjectionMatrix();
    }
    if (this.vrm) this.vrm.update(dt);
    this.renderer.render(this.scene, this.camera);
  }

  // The weights the avatar's expression manager holds now (tests read them).
  expressionValues() {
    const out = {};
    if (!this.vrm) return out;
    for (const name of this.available) out[name] = this.vrm.expressionManager.getValue(name);
    return out;
  }
}
